// Command loadgen posts AdmissionReviews to a webhook, closed loop, and reports every answer.
//
// Why it exists: the benchmarks' client must cost far less than the server it measures. On two
// cores, a Python client posting 3,000 reviews/s saturates its own core, and the latency it reports is
// mostly its own event loop's queue. Go's HTTP client does the same work for a fraction of the CPU.
//
// Input: -template, one request body containing -marker, and -uids, a file of one uid per line: body
// i is the template with the marker replaced by uid i (a 15 s run at 3,000/s would otherwise be
// 100 MB of bodies). Each is posted once, in order, by -concurrency workers over keep-alive TLS
// connections, until all are posted or -seconds have passed. Output on stdout, one line per answer:
//
//	<index>\t<status>\t<microseconds>\t<response body on one line>
//
// then a last line "wall\t<seconds>". A transport error is reported as status 0 with its text.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

type answer struct {
	index   int
	status  int
	micros  int64
	payload []byte
}

func main() {
	url := flag.String("url", "", "webhook URL (https)")
	caFile := flag.String("ca", "", "CA bundle that signed the webhook's certificate")
	templateFile := flag.String("template", "", "the request body, with -marker where each uid goes")
	uidsFile := flag.String("uids", "", "one uid per line: one request each")
	marker := flag.String("marker", "", "the text of the template that each uid replaces")
	concurrency := flag.Int("concurrency", 8, "requests in flight")
	seconds := flag.Float64("seconds", 15, "stop posting after this long")
	flag.Parse()
	if err := run(*url, *caFile, *templateFile, *uidsFile, *marker, *concurrency, *seconds); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(url, caFile, templateFile, uidsFile, marker string, concurrency int, seconds float64) error {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("no certificate in %s", caFile)
	}
	template, err := os.ReadFile(templateFile)
	if err != nil {
		return err
	}
	at := bytes.Index(template, []byte(marker))
	if marker == "" || at < 0 {
		return fmt.Errorf("marker %q not in %s", marker, templateFile)
	}
	uids, err := readLines(uidsFile)
	if err != nil {
		return err
	}
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: concurrency,
		MaxConnsPerHost:     concurrency,
		ForceAttemptHTTP2:   false, // the apiserver calls webhooks over HTTP/1.1 keep-alive as well
	}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	answers := make([]answer, len(uids))
	var next atomic.Int64
	start := time.Now()
	stopAt := start.Add(time.Duration(seconds * float64(time.Second)))
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(uids) || time.Now().After(stopAt) {
					return
				}
				body := make([]byte, 0, len(template)+len(uids[i]))
				body = append(append(append(body, template[:at]...), uids[i]...), template[at+len(marker):]...)
				answers[i] = post(client, url, i, body)
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start).Seconds()
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	defer out.Flush()
	for i := range answers {
		a := answers[i]
		if a.status == 0 && a.payload == nil {
			continue // never posted: the time was up
		}
		fmt.Fprintf(out, "%d\t%d\t%d\t%s\n", a.index, a.status, a.micros, bytes.ReplaceAll(a.payload, []byte("\n"), []byte(" ")))
	}
	fmt.Fprintf(out, "wall\t%.6f\n", wall)
	return nil
}

func post(client *http.Client, url string, index int, body []byte) answer {
	sent := time.Now()
	resp, err := client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return answer{index, 0, time.Since(sent).Microseconds(), []byte(err.Error())}
	}
	payload, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	micros := time.Since(sent).Microseconds()
	if err != nil {
		return answer{index, 0, micros, []byte(err.Error())}
	}
	return answer{index, resp.StatusCode, micros, payload}
}

func readLines(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines [][]byte
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 1<<20), 64<<20)
	for scanner.Scan() {
		line := append([]byte(nil), scanner.Bytes()...)
		if len(line) > 0 {
			lines = append(lines, line)
		}
	}
	return lines, scanner.Err()
}
