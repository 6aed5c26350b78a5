# Ruby's Net::HTTP as a user runs it: `ruby net_http.rb get|sse URL`.
#
# Net::HTTP reads http_proxy/https_proxy and no_proxy (its default proxy is
# :ENV) and OpenSSL's default store reads SSL_CERT_FILE. It never proxies a
# request to localhost or a loopback address, whatever no_proxy says.
#
# Output (tests/test_clients.py reads it): `status N` then the body, or each
# non-empty event-stream line as it arrives.
require "net/http"

$stdout.sync = true
mode, url = ARGV
uri = URI(url)
Net::HTTP.start(uri.host, uri.port, use_ssl: uri.scheme == "https", open_timeout: 15, read_timeout: 15) do |http|
  http.request(Net::HTTP::Get.new(uri)) do |response|
    if mode == "get"
      puts "status #{response.code}", response.read_body
    else
      pending = +""
      response.read_body do |chunk|
        pending << chunk
        while (line = pending.slice!(/\A.*\n/))
          puts line.strip unless line.strip.empty?
        end
      end
    end
  end
end
