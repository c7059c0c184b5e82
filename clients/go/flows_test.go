package idempotency

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Multi-transaction mode: the claim commits at once, so a duplicate while
// the handler runs is 409 with Retry-After; the handler sees its token;
// a panic frees the key (idem_fail, retryable) and the next request
// takes over with attempts 2 and the checkpoint left.
func TestMultiTransaction(t *testing.T) {
	var runs int64
	release := make(chan struct{})
	var seen []Attempt
	var mu sync.Mutex
	url := serve(t, pool, Options{MultiTransaction: true}, orders(&runs, func(w http.ResponseWriter, r *http.Request, run int64) bool {
		a := AttemptFrom(r.Context())
		mu.Lock()
		seen = append(seen, *a)
		mu.Unlock()
		if run == 1 {
			if err := a.Checkpoint(r.Context(), "charged"); err != nil {
				http.Error(w, err.Error(), 500)
				return true
			}
			<-release
			panic("external system down")
		}
		return false
	}))
	key := newKey(t)
	done := make(chan served)
	go func() { done <- send(url+"/pay", "POST", key, "{}") }()
	time.Sleep(300 * time.Millisecond)
	dup := mustSend(t, url+"/pay", "POST", key, "{}")
	if dup.status != 409 || dup.header.Get("Retry-After") != "1" {
		t.Fatalf("duplicate in flight: %d %s", dup.status, dup.body)
	}
	close(release)
	if s := <-done; s.status != 500 {
		t.Fatalf("panicking owner: %d", s.status)
	}
	s := mustSend(t, url+"/pay", "POST", key, "{}")
	again := mustSend(t, url+"/pay", "POST", key, "{}")
	if s.status != 201 || !again.replayed() || !sameAnswer(s, again) || runs != 2 {
		t.Fatalf("takeover: %d, replay %v, runs %d", s.status, again.replayed(), runs)
	}
	if len(seen) != 2 || seen[0].Token == 0 || seen[1].Token <= seen[0].Token ||
		seen[1].Attempts != 2 || seen[1].RecoveryPoint != "charged" {
		t.Fatalf("attempts seen: %+v", seen)
	}
	if until, err := (&Attempt{Key: key, Scope: "default", Token: seen[1].Token, db: pool}).Extend(context.Background(), time.Minute); err == nil {
		t.Errorf("extend after completion: %v, want an error", until)
	}
}

// Multi-transaction mode: the owner's lease runs out while it works; of 8
// duplicates sent then, exactly one takes over (attempts 2), and the
// owner's late completion, with a stale token, is 409.
func TestLeaseTakeover(t *testing.T) {
	var runs int64
	url := serve(t, pool, Options{MultiTransaction: true, Lease: 500 * time.Millisecond},
		orders(&runs, func(w http.ResponseWriter, r *http.Request, run int64) bool {
			if run == 1 {
				time.Sleep(1500 * time.Millisecond)
			}
			return false
		}))
	key := newKey(t)
	owner := make(chan served)
	go func() { owner <- send(url+"/pay", "POST", key, "{}") }()
	time.Sleep(800 * time.Millisecond) // past the lease
	dups := make([]served, 8)
	var wg sync.WaitGroup
	for i := range dups {
		wg.Add(1)
		go func(i int) { defer wg.Done(); dups[i] = send(url+"/pay", "POST", key, "{}") }(i)
	}
	wg.Wait()
	took := 0
	for _, d := range dups {
		switch {
		case d.status == 201 && !d.replayed():
			took++
		case d.status == 201 || d.status == 409:
		default:
			t.Errorf("duplicate: %d %s", d.status, d.body)
		}
	}
	if o := <-owner; o.status != 409 {
		t.Errorf("owner after losing its lease: %d %s", o.status, o.body)
	}
	var attempts int
	pool.QueryRow(context.Background(), `SELECT attempts FROM idempotency.idem_lookup($1)`, key).Scan(&attempts)
	if took != 1 || runs != 2 || attempts != 2 {
		t.Fatalf("takeovers %d, runs %d, attempts %d; want 1, 2, 2", took, runs, attempts)
	}
}

// Round trips per path, counted on the connection (a write after a read
// starts one), with statements already prepared on it.
func TestRoundTrips(t *testing.T) {
	var trips int64
	p, err := newPool(1, &trips)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var runs int64
	var atAnswer int64 = -1
	single := New(p, Options{})
	single.opt.answered = func() { atomic.StoreInt64(&atAnswer, atomic.LoadInt64(&trips)) }
	multi := New(p, Options{MultiTransaction: true})
	h := orders(&runs, nil) // one statement of its own
	srvS := serveWith(t, single, h)
	srvM := serveWith(t, multi, h)

	idle := func() {
		for p.Stat().AcquiredConns() != 0 {
			time.Sleep(time.Millisecond)
		}
	}
	count := func(url, key, body string) (int64, served) {
		idle()
		before := atomic.LoadInt64(&trips)
		atomic.StoreInt64(&atAnswer, -1)
		s := mustSend(t, url, "POST", key, body)
		idle()
		if a := atomic.LoadInt64(&atAnswer); a >= 0 {
			atAnswer = a - before
		}
		return atomic.LoadInt64(&trips) - before, s
	}
	inFlight := func(key string) {
		_, err := p.Exec(context.Background(), `SELECT FROM idempotency.idem_claim($1, fingerprint => $2, lease => '1 hour')`,
			key, Fingerprint("POST", "/o", []byte("{}")))
		if err != nil {
			t.Fatal(err)
		}
	}
	// Warm up: prepare every statement once.
	for _, url := range []string{srvS, srvM} {
		k := newKey(t)
		count(url+"/o", k, "{}")
		count(url+"/o", k, "{}")
		count(url+"/o", k, "other")
		k = newKey(t)
		inFlight(k)
		count(url+"/o", k, "{}")
	}

	type path struct {
		name          string
		url, body     string
		prepare       func(key string)
		want, wantAns int64 // total, and before the answer (-1: not measured)
		status        int
	}
	first := func(url string) func(string) { return func(k string) { count(url+"/o", k, "{}") } }
	for _, c := range []path{
		{"single first time", srvS + "/o", "{}", nil, 3, -1, 201},
		{"single replay", srvS + "/o", "{}", first(srvS), 2, 1, 201},
		{"single in progress", srvS + "/o", "{}", inFlight, 2, 1, 409},
		{"single mismatch", srvS + "/o", "other", first(srvS), 2, 1, 422},
		{"multi first time", srvM + "/o", "{}", nil, 2, -1, 201}, // its insert goes to the other pool
		{"multi replay", srvM + "/o", "{}", first(srvM), 1, -1, 201},
		{"multi in progress", srvM + "/o", "{}", inFlight, 1, -1, 409},
		{"multi mismatch", srvM + "/o", "other", first(srvM), 1, -1, 422},
	} {
		key := newKey(t)
		if c.prepare != nil {
			c.prepare(key)
		}
		n, s := count(c.url, key, c.body)
		if s.status != c.status || n != c.want || (c.wantAns >= 0 && atAnswer != c.wantAns) {
			t.Errorf("%s: %d round trips (%d before the answer), status %d; want %d (%d), %d",
				c.name, n, atAnswer, s.status, c.want, c.wantAns, c.status)
		} else {
			t.Logf("%s: %d round trips", c.name, n)
		}
	}
}

func serveWith(t *testing.T, m *Middleware, h http.HandlerFunc) string {
	srv := httptest.NewServer(m.Wrap(h))
	t.Cleanup(srv.Close)
	return srv.URL
}

// Waiting (WaitFor): 16 duplicates of a slow request, sent while it runs,
// all get its answer, replayed, within 100 ms of its commit; in both modes.
func TestWaitForAnswer(t *testing.T) {
	for _, multi := range []bool{false, true} {
		name := "single"
		if multi {
			name = "multi"
		}
		t.Run(name, func(t *testing.T) {
			var runs int64
			var committed time.Time
			opt := Options{MultiTransaction: multi, WaitFor: 10 * time.Second,
				onCommit: func(*http.Request) { committed = time.Now() }}
			url := serve(t, pool, opt, orders(&runs, func(http.ResponseWriter, *http.Request, int64) bool {
				time.Sleep(time.Second)
				return false
			}))
			key := newKey(t)
			owner := make(chan served)
			go func() { owner <- send(url+"/slow", "POST", key, "{}") }()
			time.Sleep(200 * time.Millisecond)
			dups := make([]served, 16)
			var wg sync.WaitGroup
			for i := range dups {
				wg.Add(1)
				go func(i int) { defer wg.Done(); dups[i] = send(url+"/slow", "POST", key, "{}") }(i)
			}
			wg.Wait()
			o := <-owner
			var lat []time.Duration
			for i, d := range dups {
				if !d.replayed() || !sameAnswer(o, d) {
					t.Fatalf("duplicate %d: %d replayed %v %s", i, d.status, d.replayed(), d.body)
				}
				lat = append(lat, d.at.Sub(committed))
			}
			if max := distribution("wait_for, "+name+"-transaction mode", lat); max > 100*time.Millisecond {
				t.Errorf("slowest waiter answered %v after the commit", max)
			}
			if runs != 1 {
				t.Errorf("runs %d", runs)
			}
		})
	}
}

// A restart (pg_ctl restart -m immediate) in the middle of a storm loses
// no answered request: every key answered 2xx replays the same bytes after
// it and has its effect once; every key ends with its effect once.
func TestRestartMidStorm(t *testing.T) {
	pgctl := filepath.Join(os.Getenv("PG_BIN"), "pg_ctl")
	data := os.Getenv("IDEM_PGDATA")
	if os.Getenv("PG_BIN") == "" || data == "" {
		t.Skip("PG_BIN and IDEM_PGDATA are not set")
	}
	logFile := filepath.Join(os.TempDir(), "idempotency-go-restart.log")
	if w := os.Getenv("IDEM_CLIENT_WORK"); w != "" {
		logFile = filepath.Join(w, "postgres-after-restart.log")
	}
	var runs int64
	url := serve(t, pool, Options{}, orders(&runs, nil))
	const n = 240
	keys := make([]string, n)
	answers := make([]served, n)
	for i := range keys {
		keys[i] = newKey(t)
	}
	var next int64 = -1
	var wg sync.WaitGroup
	restarted := make(chan error, 1)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i >= n {
					return
				}
				if i == n/3 {
					go func() {
						out, err := exec.Command(pgctl, "-D", data, "-l", logFile, "-m", "immediate", "-w", "restart").CombinedOutput()
						if err != nil {
							t.Logf("pg_ctl: %s", out)
						}
						restarted <- err
					}()
				}
				answers[i] = send(url+"/orders", "POST", keys[i], "{}")
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	if err := <-restarted; err != nil {
		t.Fatalf("pg_ctl restart: %v", err)
	}
	ok, failed := 0, 0
	for i, key := range keys {
		var again served
		for try := 0; try < 100; try++ {
			if again = send(url+"/orders", "POST", key, "{}"); again.status == 201 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if again.status != 201 {
			t.Fatalf("key %d never answered after the restart: %d %s", i, again.status, again.body)
		}
		if a := answers[i]; a.status/100 == 2 {
			ok++
			if !again.replayed() || !sameAnswer(a, again) {
				t.Errorf("key %d answered %d before the restart, now %d %s", i, a.status, again.status, again.body)
			}
		} else {
			failed++
		}
		if e := effects(t, key); e != 1 {
			t.Errorf("key %d has %d effects", i, e)
		}
	}
	t.Logf("%d answered 2xx during the storm, %d not (restart)", ok, failed)
	if failed == 0 || ok == 0 {
		t.Errorf("the restart did not fall in the storm (%d ok, %d failed)", ok, failed)
	}
}
