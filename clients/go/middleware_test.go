package idempotency

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A first request runs and stores its answer; the same request again gets
// the same bytes, status, Location and Content-Type, marked replayed, and
// the effect exists once. Headers not kept are not replayed.
func TestFirstTimeThenReplay(t *testing.T) {
	var runs int64
	url := serve(t, pool, Options{}, orders(&runs, nil))
	key := newKey(t)
	first := mustSend(t, url+"/orders?x=1", "POST", key, `{"sku": "a"}`)
	if first.status != 201 || first.replayed() || first.header.Get("X-Not-Kept") != "1" {
		t.Fatalf("first answer: %d %v %s", first.status, first.header, first.body)
	}
	again := mustSend(t, url+"/orders?x=1", "POST", key, `{"sku": "a"}`)
	if !again.replayed() || !sameAnswer(first, again) {
		t.Fatalf("replay differs:\n%d %v %s\n%d %v %s", first.status, first.header, first.body,
			again.status, again.header, again.body)
	}
	if again.header.Get("X-Not-Kept") != "" {
		t.Errorf("a header not kept was replayed")
	}
	if runs != 1 || effects(t, key) != 1 {
		t.Errorf("runs %d, effects %d; want 1 and 1", runs, effects(t, key))
	}
}

// Bodies are stored as bytes: not JSON, not UTF-8, and a handler that sets
// no Content-Type gets the sniffed one, the same on replay; several values
// of a kept header come back in order.
func TestBinaryBodyAndHeaders(t *testing.T) {
	payload := append([]byte("%PDF-1.7\n"), 0, 0xff, 0xfe, '\n', 0)
	var runs int64
	url := serve(t, pool, Options{KeptHeaders: []string{"Location", "X-Tag"}},
		func(w http.ResponseWriter, r *http.Request) {
			atomic.AddInt64(&runs, 1)
			w.Header().Add("X-Tag", "one")
			w.Header().Add("X-Tag", "two")
			w.Write(payload)
		})
	key := newKey(t)
	first := mustSend(t, url+"/img", "PUT", key, "x")
	again := mustSend(t, url+"/img", "PUT", key, "x")
	if string(again.body) != string(payload) || !again.replayed() || again.status != 200 {
		t.Fatalf("replay: %d %q", again.status, again.body)
	}
	if first.header.Get("Content-Type") != again.header.Get("Content-Type") ||
		again.header.Get("Content-Type") != "application/pdf" {
		t.Errorf("content types %q and %q", first.header.Get("Content-Type"), again.header.Get("Content-Type"))
	}
	if got := strings.Join(again.header.Values("X-Tag"), ","); got != "one,two" {
		t.Errorf("X-Tag replayed as %q", got)
	}
	if runs != 1 {
		t.Errorf("runs %d", runs)
	}
}

// 64 identical requests at once: one execution, 63 byte-identical replays.
// The duplicates wait for the first (WaitFor); without a bound they would
// get 409 (TestInProgressAtOnce).
func TestConcurrentDuplicates(t *testing.T) {
	var runs int64
	url := serve(t, pool, Options{WaitFor: 20 * time.Second}, orders(&runs, func(http.ResponseWriter, *http.Request, int64) bool {
		time.Sleep(200 * time.Millisecond)
		return false
	}))
	key := newKey(t)
	answers := make([]served, 64)
	var wg sync.WaitGroup
	for i := range answers {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			answers[i] = send(url+"/orders", "POST", key, `{"sku": "storm"}`)
		}(i)
	}
	wg.Wait()
	var first *served
	replays := 0
	for i, a := range answers {
		if a.err != nil || a.status != 201 {
			t.Fatalf("answer %d: %v %d %s", i, a.err, a.status, a.body)
		}
		if a.replayed() {
			replays++
		} else if first == nil {
			first = &answers[i]
		} else {
			t.Fatalf("two first-time answers")
		}
	}
	if first == nil || replays != 63 {
		t.Fatalf("replays %d, want 63", replays)
	}
	for i, a := range answers {
		if !sameAnswer(*first, a) {
			t.Fatalf("answer %d differs: %s / %s", i, a.body, first.body)
		}
	}
	if runs != 1 || effects(t, key) != 1 {
		t.Errorf("runs %d, effects %d; want 1 and 1", runs, effects(t, key))
	}
}

// Without WaitFor, a duplicate of a request in flight in single-transaction
// mode (its claim uncommitted) gets 409 with Retry-After at once, not once
// the first commits.
func TestInProgressAtOnce(t *testing.T) {
	var runs int64
	url := serve(t, pool, Options{}, orders(&runs, func(http.ResponseWriter, *http.Request, int64) bool {
		time.Sleep(time.Second)
		return false
	}))
	key := newKey(t)
	done := make(chan served)
	go func() { done <- send(url+"/orders", "POST", key, "{}") }()
	time.Sleep(300 * time.Millisecond)
	t0 := time.Now()
	dup := mustSend(t, url+"/orders", "POST", key, "{}")
	if took := dup.at.Sub(t0); dup.status != 409 || dup.header.Get("Retry-After") != "1" || took > 500*time.Millisecond {
		t.Fatalf("duplicate in flight: %d %s after %v; want 409 at once", dup.status, dup.body, took)
	}
	if s := <-done; s.status != 201 || runs != 1 {
		t.Fatalf("first: %d, runs %d", s.status, runs)
	}
}

// The same key with another body, method or path is 422, and runs nothing.
func TestMismatch(t *testing.T) {
	var runs int64
	url := serve(t, pool, Options{}, orders(&runs, nil))
	key := newKey(t)
	mustSend(t, url+"/orders", "POST", key, `{"sku": "a"}`)
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/orders", `{"sku": "b"}`},
		{"POST", "/orders?page=2", `{"sku": "a"}`},
		{"PUT", "/orders", `{"sku": "a"}`},
	} {
		s := mustSend(t, url+c.path, c.method, key, c.body)
		if s.status != 422 || s.replayed() {
			t.Errorf("%v: %d %s", c, s.status, s.body)
		}
	}
	if runs != 1 {
		t.Errorf("runs %d", runs)
	}
}

// Without the header: 400 when required, else the handler runs with no
// transaction; a key over 255 bytes is 400.
func TestMissingAndLongKeys(t *testing.T) {
	var runs int64
	var sawTx bool
	h := func(w http.ResponseWriter, r *http.Request) {
		atomic.AddInt64(&runs, 1)
		sawTx = Tx(r.Context()) != nil
		w.Write([]byte("ok"))
	}
	required := serve(t, pool, Options{Required: true}, h)
	optional := serve(t, pool, Options{}, h)
	if s := mustSend(t, required+"/", "POST", "", "x"); s.status != 400 || !strings.Contains(string(s.body), "required") {
		t.Errorf("required, no key: %d %s", s.status, s.body)
	}
	if s := mustSend(t, optional+"/", "POST", "", "x"); s.status != 200 || sawTx {
		t.Errorf("optional, no key: %d, transaction %v", s.status, sawTx)
	}
	if s := mustSend(t, optional+"/", "POST", strings.Repeat("k", 256), "x"); s.status != 400 {
		t.Errorf("long key: %d", s.status)
	}
	long := newKey(t)
	long += strings.Repeat("k", 255-len(long))
	if s := mustSend(t, optional+"/", "POST", long, "x"); s.status != 200 || !sawTx {
		t.Errorf("255-byte key: %d, transaction %v", s.status, sawTx)
	}
	if runs != 2 {
		t.Errorf("runs %d, want 2", runs)
	}
}

// A handler that panics, or answers 5xx, stores nothing and its database
// work rolls back; the retry runs again.
func TestFailureStoresNothing(t *testing.T) {
	for _, mode := range []string{"panic", "503"} {
		t.Run(mode, func(t *testing.T) {
			var runs int64
			url := serve(t, pool, Options{}, orders(&runs, nil))
			url2 := serve(t, pool, Options{}, func(w http.ResponseWriter, r *http.Request) {
				atomic.AddInt64(&runs, 1)
				Tx(r.Context()).Exec(r.Context(), `INSERT INTO go_effects (key) VALUES ($1)`, r.Header.Get(HeaderKey))
				if mode == "panic" {
					panic("boom")
				}
				http.Error(w, "down", 503)
			})
			key := newKey(t)
			s := mustSend(t, url2+"/orders", "POST", key, "{}")
			want := 500
			if mode == "503" {
				want = 503
			}
			if s.status != want || stored(t, key) || effects(t, key) != 0 {
				t.Fatalf("failed run: %d, stored %v, effects %d", s.status, stored(t, key), effects(t, key))
			}
			s = mustSend(t, url+"/orders", "POST", key, "{}")
			if s.status != 201 || s.replayed() || runs != 2 || effects(t, key) != 1 {
				t.Fatalf("retry: %d replayed %v runs %d effects %d", s.status, s.replayed(), runs, effects(t, key))
			}
		})
	}
}

// A serialization failure in the handler (raised by a DO block on the
// first attempt) runs the whole transaction again; one that never stops
// gives 503 after Retries more attempts, with nothing stored.
func TestSerializationFailureRetried(t *testing.T) {
	raise := func(r *http.Request, yes bool) error {
		_, err := Tx(r.Context()).Exec(r.Context(), fmt.Sprintf(`DO $$ BEGIN IF %t THEN
			RAISE EXCEPTION 'could not serialize' USING ERRCODE = '40001'; END IF; END $$`, yes))
		return err
	}
	var runs int64
	url := serve(t, pool, Options{}, orders(&runs, func(w http.ResponseWriter, r *http.Request, run int64) bool {
		Tx(r.Context()).Exec(r.Context(), `INSERT INTO go_effects (key) VALUES ($1)`, r.Header.Get(HeaderKey))
		if err := raise(r, run == 1); err != nil {
			http.Error(w, err.Error(), 500)
			return true
		}
		return false
	}))
	key := newKey(t)
	s := mustSend(t, url+"/orders", "POST", key, "{}")
	if s.status != 201 || runs != 2 || effects(t, key) != 2 { // the retry's own row and the orders row
		t.Fatalf("status %d runs %d effects %d; want 201, 2, 2", s.status, runs, effects(t, key))
	}

	var always int64
	url = serve(t, pool, Options{Retries: 2}, func(w http.ResponseWriter, r *http.Request) {
		atomic.AddInt64(&always, 1)
		if err := raise(r, true); err != nil {
			http.Error(w, err.Error(), 500)
		}
	})
	key = newKey(t)
	s = mustSend(t, url+"/orders", "POST", key, "{}")
	if s.status != 503 || always != 3 || stored(t, key) {
		t.Fatalf("status %d runs %d stored %v; want 503, 3, false", s.status, always, stored(t, key))
	}
}

// The handler's transaction: nested Begin is a savepoint, Commit of the
// request's transaction is refused, and a snowflake above 2^53 crosses as
// a string both ways and replays unchanged.
func TestTransactionAndSnowflake(t *testing.T) {
	const big = "9007199254740993" // 2^53 + 1: a float64 would make it ...992
	var runs int64
	url := serve(t, pool, Options{}, func(w http.ResponseWriter, r *http.Request) {
		atomic.AddInt64(&runs, 1)
		ctx, tx := r.Context(), Tx(r.Context())
		if err := tx.Commit(ctx); err != ErrTxManaged {
			http.Error(w, fmt.Sprint("commit: ", err), 500)
			return
		}
		sp, err := tx.Begin(ctx)
		if err == nil {
			_, err = sp.Exec(ctx, `INSERT INTO go_effects (key) VALUES ('savepoint-rolled-back')`)
		}
		if err == nil {
			err = sp.Rollback(ctx)
		}
		var in, out Snowflake = big, ""
		var asText string
		if err == nil {
			err = tx.QueryRow(ctx, `SELECT $1::text::idempotency.snowflake, $1::text::idempotency.snowflake::text`,
				in).Scan(&out, &asText)
		}
		var fresh Snowflake
		if err == nil {
			err = tx.QueryRow(ctx, `SELECT idempotency.snowflake_id()`).Scan(&fresh)
		}
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"in": "%s", "out": "%s", "text": "%s", "fresh": "%s"}`, in, out, asText, fresh)
	})
	key := newKey(t)
	first := mustSend(t, url+"/ids", "POST", key, "")
	again := mustSend(t, url+"/ids", "POST", key, "")
	want := fmt.Sprintf(`{"in": "%s", "out": "%s", "text": "%s"`, big, big, big)
	if first.status != 200 || !strings.HasPrefix(string(first.body), want) {
		t.Fatalf("first: %d %s", first.status, first.body)
	}
	if !again.replayed() || string(again.body) != string(first.body) {
		t.Fatalf("replay: %s", again.body)
	}
	if effects(t, "savepoint-rolled-back") != 0 {
		t.Errorf("the savepoint's insert stayed")
	}
	var fresh struct{ Fresh string }
	fmt.Sscanf(strings.SplitN(string(first.body), `"fresh": "`, 2)[1], "%s", &fresh.Fresh)
	if len(strings.Trim(fresh.Fresh, `"}`)) < 16 {
		t.Errorf("snowflake_id() %q is not above 2^53", fresh.Fresh)
	}
}

// Scopes keep the same key apart.
func TestScopes(t *testing.T) {
	var runs int64
	url := serve(t, pool, Options{ScopeFunc: func(r *http.Request) string {
		return r.URL.Query().Get("tenant")
	}}, orders(&runs, nil))
	key := newKey(t)
	a := mustSend(t, url+"/o?tenant=a", "POST", key, "{}")
	b := mustSend(t, url+"/o?tenant=b", "POST", key, "{}")
	a2 := mustSend(t, url+"/o?tenant=a", "POST", key, "{}")
	if a.replayed() || b.replayed() || !a2.replayed() || runs != 2 {
		t.Fatalf("replayed %v %v %v, runs %d", a.replayed(), b.replayed(), a2.replayed(), runs)
	}
}
