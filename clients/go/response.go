package idempotency

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// recorder buffers the handler's answer: nothing reaches the client
// before the completion commits (or the transaction rolls back).
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}} }

func (w *recorder) Header() http.Header { return w.header }

func (w *recorder) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *recorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.body.Write(p)
}

// Flush does nothing: the response is sent whole once it is stored.
func (w *recorder) Flush() {}

// finish settles what net/http would have settled while sending: the
// status, and the Content-Type sniffed from the body when the handler set
// none, so that the first answer and its replays carry the same one.
func (w *recorder) finish() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if _, set := w.header["Content-Type"]; !set && w.body.Len() > 0 {
		w.header.Set("Content-Type", http.DetectContentType(w.body.Bytes()))
	}
}

// contentType is the Content-Type to store, nil for NULL.
func (w *recorder) contentType() interface{} {
	if v := w.header.Get("Content-Type"); v != "" {
		return v
	}
	return nil
}

// keptHeaders is the JSON object of the kept headers (lower-case name ->
// string, or array of strings when repeated), nil when none is set.
func (w *recorder) keptHeaders(kept []string) (interface{}, error) {
	obj := map[string]interface{}{}
	for _, name := range kept {
		vals := w.header.Values(name)
		switch len(vals) {
		case 0:
			continue
		case 1:
			obj[strings.ToLower(name)] = vals[0]
		default:
			obj[strings.ToLower(name)] = vals
		}
	}
	if len(obj) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

// send writes the buffered answer to the client.
func (w *recorder) send(to http.ResponseWriter) {
	h := to.Header()
	for name, vals := range w.header {
		h[name] = vals
	}
	h.Set("Content-Length", strconv.Itoa(w.body.Len()))
	to.WriteHeader(w.status)
	to.Write(w.body.Bytes())
}

// replay sends a stored response: its status, kept headers, Content-Type
// and body bytes, marked Idempotent-Replayed. A completion made from SQL
// with only a jsonb response is sent as that JSON.
func replay(w http.ResponseWriter, c *Claim) error {
	h := w.Header()
	if len(c.Headers) > 0 {
		var stored map[string]json.RawMessage
		if err := json.Unmarshal(c.Headers, &stored); err != nil {
			return err
		}
		for name, raw := range stored {
			var one string
			if json.Unmarshal(raw, &one) == nil {
				h.Add(name, one)
				continue
			}
			var many []string
			if err := json.Unmarshal(raw, &many); err != nil {
				return err
			}
			for _, v := range many {
				h.Add(name, v)
			}
		}
	}
	body, ctype := c.Body, c.ContentType
	if body == nil && c.Response != nil {
		body = c.Response
		if ctype == "" {
			ctype = "application/json"
		}
	}
	if ctype != "" {
		h.Set("Content-Type", ctype)
	} else {
		h["Content-Type"] = nil // no sniffing: the first answer had none
	}
	status := c.Status
	if status == 0 {
		status = http.StatusOK
	}
	h.Set("Idempotent-Replayed", "true")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, err := w.Write(body)
	return err
}

// fail answers with a short JSON error.
func fail(w http.ResponseWriter, status int, msg string, extra ...string) {
	h := w.Header()
	for i := 0; i+1 < len(extra); i += 2 {
		h.Set(extra[i], extra[i+1])
	}
	b, _ := json.Marshal(map[string]string{"error": msg})
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}
