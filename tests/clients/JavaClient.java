// Java 17's HttpClient as a user runs it: `java JavaClient get|sse|ws URL`.
//
// The JVM reads no proxy variable and no CA bundle: the user's step is
// -Dhttp.proxyHost/-Dhttp.proxyPort/-Dhttps.proxyHost/-Dhttps.proxyPort and
// -Djavax.net.ssl.trustStore (a keystore holding the proxy's CA, made with
// keytool -importcert -keystore FILE). HttpClient.newHttpClient() uses the
// default proxy selector, which reads those properties.
//
// Output (tests/test_clients.py reads it): `status N` then the body; each
// non-empty event-stream line as it arrives; or the echo of `hello`, then
// `closed CODE REASON SECONDS` once the server's close frame has arrived
// (SECONDS from sending `close`). Java answers the close and then ends the
// connection itself; it waits for no end from the server.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.net.http.WebSocket;
import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.TimeUnit;

public class JavaClient {
    static final Duration TIMEOUT = Duration.ofSeconds(15);

    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().connectTimeout(TIMEOUT).build();
        URI uri = URI.create(args[1]);
        switch (args[0]) {
            case "get" -> {
                HttpRequest request = HttpRequest.newBuilder(uri).timeout(TIMEOUT).build();
                HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
                System.out.println("status " + response.statusCode());
                System.out.println(response.body());
            }
            case "sse" -> {
                HttpRequest request = HttpRequest.newBuilder(uri).timeout(TIMEOUT).build();
                HttpResponse<java.util.stream.Stream<String>> response =
                        client.send(request, HttpResponse.BodyHandlers.ofLines());
                response.body().map(String::strip).filter(line -> !line.isEmpty()).forEach(line -> {
                    System.out.println(line);
                    System.out.flush();
                });
            }
            case "ws" -> webSocket(client, uri);
            default -> throw new IllegalArgumentException("usage: JavaClient get|sse|ws URL");
        }
        System.out.flush();
        System.exit(0);
    }

    static void webSocket(HttpClient client, URI uri) throws Exception {
        CompletableFuture<String> closed = new CompletableFuture<>();
        long[] start = new long[1];
        WebSocket.Listener listener = new WebSocket.Listener() {
            CompletableFuture<WebSocket> hello;

            @Override
            public void onOpen(WebSocket ws) {
                ws.request(1);
                hello = ws.sendText("hello", true);
            }

            @Override
            public CompletionStage<?> onText(WebSocket ws, CharSequence data, boolean last) {
                System.out.println(data);
                System.out.flush();
                ws.request(1);
                // One send at a time: `close` goes once `hello` has been sent.
                return hello.thenCompose(sent -> {
                    start[0] = System.nanoTime();
                    return ws.sendText("close", true);
                });
            }

            @Override
            public CompletionStage<?> onClose(WebSocket ws, int code, String reason) {
                // Returning completes the closing handshake: the client sends its
                // Close and ends the connection (RFC 6455 §5.5.1).
                closed.complete(code + " " + reason);
                return null;
            }

            @Override
            public void onError(WebSocket ws, Throwable error) {
                closed.completeExceptionally(error);
            }
        };
        client.newWebSocketBuilder().connectTimeout(TIMEOUT).buildAsync(uri, listener)
                .get(TIMEOUT.toSeconds(), TimeUnit.SECONDS);
        String codeReason = closed.get(TIMEOUT.toSeconds(), TimeUnit.SECONDS);
        double seconds = (System.nanoTime() - start[0]) / 1e9;
        System.out.printf("closed %s %.2f%n", codeReason, seconds);
    }
}
