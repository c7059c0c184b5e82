// Package idempotency is net/http middleware for the Idempotency-Key
// header over the idempotency PostgreSQL extension, with pgx v4.
//
// A request that carries the header is claimed in the database; the first
// one runs the handler and its answer is stored, byte for byte, in the same
// transaction as the handler's own database work (single-transaction mode,
// the default) or with a lease and a fencing token for handlers that call
// other systems (multi-transaction mode). Duplicates get the stored answer
// with Idempotent-Replayed: true, 409 while the first is in flight (or wait
// for it, with WaitFor), 422 when the same key comes with another request.
package idempotency

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"time"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgx/v4"
	"github.com/jackc/pgx/v4/pgxpool"
)

// HeaderKey is the request header that carries the key.
const HeaderKey = "Idempotency-Key"

// MaxKeyLength is the longest key accepted, in bytes (longer: 400).
const MaxKeyLength = 255

// Options configure the middleware. The zero value is the default.
type Options struct {
	// Required answers 400 to a request without the header; otherwise such
	// a request runs the handler without idempotency.
	Required bool
	// Scope names the claims' scope ("default" when empty); ScopeFunc, when
	// set, chooses it per request instead.
	Scope     string
	ScopeFunc func(*http.Request) string
	// KeptHeaders are the response headers stored and replayed besides
	// Content-Type, which is always kept. nil means []string{"Location"};
	// an empty non-nil slice keeps none.
	KeptHeaders []string
	// Retries is how many times a request that met a serialization failure
	// (40001) or deadlock (40P01) runs again, handler included, before 503.
	// 0 means 3; a negative value means none.
	Retries int
	// WaitFor, when positive, makes a duplicate of a request in flight wait
	// up to that long for its answer (replayed, or taken over if it failed
	// or lost its lease) and answer 409 only if the bound passes. 0: the
	// duplicate gets 409 at once (idem_claim's wait => false), whether the
	// first request's claim is committed or not.
	WaitFor time.Duration
	// TTL is how long a stored answer lives (0: the scope's default_ttl).
	TTL time.Duration
	// MultiTransaction commits the claim at once with a lease and runs the
	// handler outside any transaction, with an Attempt in its context
	// (fencing token, checkpoint, extend). For handlers that call other
	// systems. Lease is the lease (0: the scope's).
	MultiTransaction bool
	Lease            time.Duration
	// ErrorLog receives errors the client does not see in full (database
	// errors, handler panics); nil means the log package's logger.
	ErrorLog *log.Logger

	// For tests: onCommit is called when a first answer has committed,
	// answered when a replay, 409 or 422 has been sent.
	onCommit func(*http.Request)
	answered func()
}

// Middleware wraps handlers. It is safe for concurrent use.
type Middleware struct {
	pool *pgxpool.Pool
	opt  Options
}

// New makes the middleware over a pool of the extension's database.
func New(pool *pgxpool.Pool, opt Options) *Middleware {
	if opt.KeptHeaders == nil {
		opt.KeptHeaders = []string{"Location"}
	}
	if opt.Retries == 0 {
		opt.Retries = 3
	} else if opt.Retries < 0 {
		opt.Retries = 0
	}
	return &Middleware{pool: pool, opt: opt}
}

// Wrap returns next behind the middleware.
func (m *Middleware) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.serve(w, r, next)
	})
}

// request is what one HTTP request brings to its attempts.
type request struct {
	key, scope  string
	body        []byte
	fingerprint []byte
}

func (m *Middleware) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	key := r.Header.Get(HeaderKey)
	if key == "" {
		if m.opt.Required {
			fail(w, http.StatusBadRequest, "the Idempotency-Key header is required")
			return
		}
		next.ServeHTTP(w, r)
		return
	}
	if len(key) > MaxKeyLength {
		fail(w, http.StatusBadRequest, "the Idempotency-Key header is longer than 255 bytes")
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		fail(w, http.StatusBadRequest, "the request body could not be read")
		return
	}
	r.Body.Close()
	req := &request{key: key, scope: m.scope(r), body: body,
		fingerprint: Fingerprint(r.Method, requestTarget(r), body)}
	if m.opt.MultiTransaction {
		m.serveMulti(w, r, next, req)
	} else {
		m.serveSingle(w, r, next, req)
	}
}

func (m *Middleware) scope(r *http.Request) string {
	if m.opt.ScopeFunc != nil {
		if s := m.opt.ScopeFunc(r); s != "" {
			return s
		}
	}
	if m.opt.Scope != "" {
		return m.opt.Scope
	}
	return "default"
}

func (m *Middleware) logf(format string, args ...interface{}) {
	if m.opt.ErrorLog != nil {
		m.opt.ErrorLog.Printf(format, args...)
	} else {
		log.Printf(format, args...)
	}
}

// answerOthers answers the outcomes that do not run the handler.
func (m *Middleware) answerOthers(w http.ResponseWriter, c *Claim) {
	switch c.Outcome {
	case Completed:
		if err := replay(w, c); err != nil {
			m.logf("idempotency: replaying a stored response: %v", err)
		}
	case InProgress:
		fail(w, http.StatusConflict, "a request with this Idempotency-Key is in progress",
			"Retry-After", "1")
	case Mismatch:
		fail(w, http.StatusUnprocessableEntity,
			"this Idempotency-Key was used with another request")
	default:
		m.logf("idempotency: unknown claim outcome %q", c.Outcome)
		fail(w, http.StatusInternalServerError, "internal error")
	}
}

// dbFailed answers a failure of the middleware's own statements: 503 when
// the database could not be reached or the retries ran out, 500 otherwise.
func (m *Middleware) dbFailed(w http.ResponseWriter, what string, err error) {
	m.logf("idempotency: %s: %v", what, err)
	var pgErr *pgconn.PgError
	if isRetryable(err) || !errors.As(err, &pgErr) || pgErr.Code[:2] == "57" || pgErr.Code[:2] == "08" {
		fail(w, http.StatusServiceUnavailable, "the database is not available, try again",
			"Retry-After", "1")
		return
	}
	fail(w, http.StatusInternalServerError, "internal error")
}

// Attempt is what the handler of a claimed request may use, from
// AttemptFrom(r.Context()).
type Attempt struct {
	Key           string
	Scope         string
	Token         int64   // fencing token: hand it to external systems
	Attempts      int     // 1 the first time, more after a takeover
	RecoveryPoint string  // the last checkpoint of an earlier attempt
	db            querier // the request's transaction, or the pool
}

// querier is what both the request's transaction and the pool offer.
type querier interface {
	Exec(context.Context, string, ...interface{}) (pgconn.CommandTag, error)
	QueryRow(context.Context, string, ...interface{}) pgx.Row
}

// Checkpoint records how far the handler got; an attempt that takes over
// receives it as RecoveryPoint. In multi-transaction mode it commits at
// once.
func (a *Attempt) Checkpoint(ctx context.Context, point string) error {
	_, err := a.db.Exec(ctx, checkpointSQL, a.Key, a.Token, point, a.Scope)
	return err
}

// Extend renews the lease from now (multi-transaction mode) and returns
// its new end.
func (a *Attempt) Extend(ctx context.Context, lease time.Duration) (time.Time, error) {
	var until time.Time
	err := a.db.QueryRow(ctx, extendSQL, a.Key, a.Token, interval(lease), a.Scope).Scan(&until)
	return until, err
}

type ctxKey int

const (
	txKey ctxKey = iota
	attemptKey
)

// Tx is the request's transaction in single-transaction mode: the
// handler's database work through it commits with the stored answer or
// rolls back with the claim. nil for a request without the header and in
// multi-transaction mode. Commit and Rollback return ErrTxManaged; Begin
// makes a savepoint.
func Tx(ctx context.Context) pgx.Tx {
	tx, _ := ctx.Value(txKey).(pgx.Tx)
	return tx
}

// AttemptFrom is the claimed request's attempt, nil without one.
func AttemptFrom(ctx context.Context) *Attempt {
	a, _ := ctx.Value(attemptKey).(*Attempt)
	return a
}
