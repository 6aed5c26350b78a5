<?php
// PHP's curl extension as a user runs it: `php -d curl.cainfo=BUNDLE curl.php get|sse URL`.
//
// libcurl reads http_proxy/HTTPS_PROXY and no_proxy, but PHP's curl reads
// neither CURL_CA_BUNDLE nor SSL_CERT_FILE: the user's step is the
// `curl.cainfo` setting (php.ini, or -d on the command line).
//
// Output (tests/test_clients.py reads it): `status N` then the body, or each
// non-empty event-stream line as it arrives.
[$_, $mode, $url] = $argv;
$ch = curl_init($url);
curl_setopt($ch, CURLOPT_CONNECTTIMEOUT, 15);
curl_setopt($ch, CURLOPT_TIMEOUT, 15);
if ($mode === "get") {
    curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
    $body = curl_exec($ch);
} else {
    $pending = "";
    curl_setopt($ch, CURLOPT_WRITEFUNCTION, function ($ch, $chunk) use (&$pending) {
        $pending .= $chunk;
        while (($at = strpos($pending, "\n")) !== false) {
            $line = trim(substr($pending, 0, $at));
            $pending = substr($pending, $at + 1);
            if ($line !== "") {
                echo $line, "\n";
                flush();
            }
        }
        return strlen($chunk);
    });
    $body = curl_exec($ch);
}
if ($body === false) {
    fwrite(STDERR, curl_error($ch) . "\n");
    exit(1);
}
if ($mode === "get") {
    echo "status ", curl_getinfo($ch, CURLINFO_RESPONSE_CODE), "\n", $body, "\n";
}
