// Go's net/http as a user runs it: `goclient get|sse URL`.
//
// The default transport reads HTTP_PROXY, HTTPS_PROXY and NO_PROXY
// (http.ProxyFromEnvironment) and, on Linux, trusts SSL_CERT_FILE. Go never
// proxies a request to localhost or a loopback address, whatever NO_PROXY says.
//
// Output (tests/test_clients.py reads it): `status N` then the body, or each
// non-empty event-stream line as it arrives.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: goclient get|sse URL")
		os.Exit(2)
	}
	client := &http.Client{Timeout: 15 * time.Second}
	resp, err := client.Get(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	if os.Args[1] == "get" {
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("status %d\n%s\n", resp.StatusCode, body)
		return
	}
	scanner := bufio.NewScanner(resp.Body)
	for scanner.Scan() {
		if line := strings.TrimSpace(scanner.Text()); line != "" {
			fmt.Println(line) // os.Stdout is unbuffered
		}
	}
	if err := scanner.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
