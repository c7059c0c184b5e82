package idempotency

// Test set-up: a pool over the server named by PGHOST, PGPORT, PGUSER and
// PGDATABASE (scripts/test.sh gives a running cluster with the extension
// preloaded), connections that count their round trips, an HTTP test
// server around the middleware, and a handler with a database effect.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgx/v4/pgxpool"
)

var pool *pgxpool.Pool

const setupSQL = `
CREATE EXTENSION IF NOT EXISTS idempotency;
CREATE TABLE IF NOT EXISTS go_effects (
	key text NOT NULL,
	token bigint,
	id text,
	at timestamptz NOT NULL DEFAULT clock_timestamp()
);`

func TestMain(m *testing.M) {
	p, err := newPool(24, nil)
	if err == nil {
		_, err = p.Exec(context.Background(), setupSQL)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "connecting to the test server (PGHOST, PGPORT, PGUSER, PGDATABASE): %v\n", err)
		os.Exit(2)
	}
	pool = p
	code := m.Run()
	pool.Close()
	os.Exit(code)
}

// newPool connects with the PG* environment; with trips set, every
// connection adds its round trips there.
func newPool(maxConns int32, trips *int64) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = maxConns
	if trips != nil {
		dial := cfg.ConnConfig.DialFunc
		cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &countingConn{Conn: c, trips: trips}, nil
		}
	}
	return pgxpool.ConnectConfig(context.Background(), cfg)
}

// countingConn counts round trips: a write that opens the connection, or
// that follows data read since the last write, starts one. (A read may be
// pending before the write that it answers, so a read alone is no sign.)
type countingConn struct {
	net.Conn
	trips *int64
	heard int32 // 1 when data was read since the last write, or at first
}

func (c *countingConn) Write(p []byte) (int, error) {
	if atomic.SwapInt32(&c.heard, 0) == 1 || atomic.LoadInt64(c.trips) == 0 {
		atomic.AddInt64(c.trips, 1)
	}
	return c.Conn.Write(p)
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		atomic.StoreInt32(&c.heard, 1)
	}
	return n, err
}

var keySeq int64

// newKey is a key no other test or earlier run uses.
func newKey(t *testing.T) string {
	return fmt.Sprintf("%s-%d-%d", t.Name(), time.Now().UnixNano(), atomic.AddInt64(&keySeq, 1))
}

// served is one answer as the client saw it.
type served struct {
	status int
	header http.Header
	body   []byte
	at     time.Time
	err    error
}

func (s served) replayed() bool { return s.header.Get("Idempotent-Replayed") == "true" }

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 100}, Timeout: 60 * time.Second}

func send(url, method, key, body string) served {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return served{err: err}
	}
	if key != "" {
		req.Header.Set(HeaderKey, key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return served{err: err, at: time.Now()}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return served{status: resp.StatusCode, header: resp.Header, body: b, at: time.Now(), err: err}
}

func mustSend(t *testing.T, url, method, key, body string) served {
	t.Helper()
	s := send(url, method, key, body)
	if s.err != nil {
		t.Fatalf("%s %s: %v", method, url, s.err)
	}
	return s
}

// serve starts an HTTP server with the middleware around h.
func serve(t *testing.T, p *pgxpool.Pool, opt Options, h http.HandlerFunc) string {
	if opt.ErrorLog == nil {
		opt.ErrorLog = log.New(io.Discard, "", 0)
	}
	srv := httptest.NewServer(New(p, opt).Wrap(h))
	t.Cleanup(srv.Close)
	return srv.URL
}

// db is the request's transaction, or the pool without one.
func db(r *http.Request) querier {
	if tx := Tx(r.Context()); tx != nil {
		return tx
	}
	return pool
}

// orders is a handler with an effect: it inserts a row for the key and
// answers 201 with a Location and a body that differs at every execution.
// runs counts executions; before, when set, runs first and may answer.
func orders(runs *int64, before func(w http.ResponseWriter, r *http.Request, run int64) bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		run := atomic.AddInt64(runs, 1)
		if before != nil && before(w, r, run) {
			return
		}
		body, _ := io.ReadAll(r.Body)
		var token int64
		if a := AttemptFrom(r.Context()); a != nil {
			token = a.Token
		}
		var id Snowflake
		err := db(r).QueryRow(r.Context(),
			`INSERT INTO go_effects (key, token, id) VALUES ($1, $2, idempotency.snowflake_id()) RETURNING id`,
			r.Header.Get(HeaderKey), token).Scan(&id)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Location", "/orders/"+string(id))
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("X-Not-Kept", "1")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id": "%s", "run": %d, "request": %q}`, id, run, body)
	}
}

// effects counts the effect rows of a key.
func effects(t *testing.T, key string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM go_effects WHERE key = $1`, key).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// stored tells whether the key has a live claim.
func stored(t *testing.T, key string) bool {
	t.Helper()
	var ok bool
	err := pool.QueryRow(context.Background(),
		`SELECT idempotency.idem_lookup($1) IS NOT NULL`, key).Scan(&ok)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func sqlState(err error) string {
	if pe, ok := err.(*pgconn.PgError); ok {
		return pe.Code
	}
	return ""
}

// distribution prints min/p50/p90/max of latencies and returns the max.
func distribution(name string, ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	pick := func(q float64) time.Duration { return ds[int(q*float64(len(ds)-1)+0.5)] }
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
	fmt.Printf("%s: %d waiters after the commit: min %s, p50 %s, p90 %s, max %s\n",
		name, len(ds), ms(ds[0]), ms(pick(0.5)), ms(pick(0.9)), ms(ds[len(ds)-1]))
	return ds[len(ds)-1]
}

func sameAnswer(a, b served) bool {
	return a.status == b.status && bytes.Equal(a.body, b.body) &&
		a.header.Get("Content-Type") == b.header.Get("Content-Type") &&
		a.header.Get("Location") == b.header.Get("Location")
}
