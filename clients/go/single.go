package idempotency

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/jackc/pgx/v4"
	"github.com/jackc/pgx/v4/pgxpool"
)

// endTimeout bounds the statements that end a transaction: they run even
// when the client has gone, so that the connection goes back clean.
const endTimeout = 30 * time.Second

// serveSingle runs the request in one transaction: BEGIN and the claim in
// one round trip, the handler on the same connection, then the completion
// and COMMIT in one round trip. A serialization failure or deadlock
// anywhere runs it all again.
func (m *Middleware) serveSingle(w http.ResponseWriter, r *http.Request, next http.Handler, req *request) {
	for attempt := 0; ; attempt++ {
		retry := m.trySingle(w, r, next, req)
		if retry == nil {
			return
		}
		if attempt >= m.opt.Retries {
			m.dbFailed(w, fmt.Sprintf("gave up after %d attempts", attempt+1), retry)
			return
		}
	}
}

// trySingle makes one attempt. It returns nil once the client has been
// answered, or the retryable error that calls for another attempt.
func (m *Middleware) trySingle(w http.ResponseWriter, r *http.Request, next http.Handler, req *request) error {
	ctx := r.Context()
	conn, err := m.pool.Acquire(ctx)
	if err != nil {
		m.dbFailed(w, "acquiring a connection", err)
		return nil
	}
	defer conn.Release()

	var b pgx.Batch
	b.Queue("BEGIN ISOLATION LEVEL READ COMMITTED")
	sql, args := claimQuery(req.key, req.scope, req.fingerprint, m.opt.TTL, 0, m.opt.WaitFor)
	b.Queue(sql, args...)
	var row claimRow
	br := conn.SendBatch(ctx, &b)
	_, err = br.Exec()
	if err == nil {
		err = br.QueryRow().Scan(row.dest()...)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return m.batchFailed(w, conn, "claiming the key", err)
	}
	claim := row.claim()

	if !claim.owns() {
		// Nothing was written: answer first, then end the transaction,
		// so the answer does not wait for a second round trip.
		m.answerOthers(w, &claim)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		if m.opt.answered != nil {
			m.opt.answered()
		}
		rollback(conn)
		return nil
	}

	st := &attemptState{}
	tx := &reqTx{conn: conn.Conn(), failure: st}
	a := &Attempt{Key: req.key, Scope: req.scope, Token: claim.Token,
		Attempts: claim.Attempts, RecoveryPoint: claim.RecoveryPoint, db: tx}
	rec := newRecorder()
	panicked, pv := runHandler(next, rec, r, req, context.WithValue(context.WithValue(ctx, txKey, tx), attemptKey, a))
	if pv == http.ErrAbortHandler {
		rollback(conn)
		panic(pv)
	}
	if st.retry != nil {
		rollback(conn)
		return st.retry
	}
	if panicked {
		rollback(conn)
		if err, ok := pv.(error); ok && isRetryable(err) {
			return err
		}
		m.logf("idempotency: handler panicked: %v", pv)
		fail(w, http.StatusInternalServerError, "internal error")
		return nil
	}
	rec.finish()
	if rec.status >= 500 {
		rollback(conn)
		rec.send(w)
		return nil
	}
	if conn.Conn().PgConn().TxStatus() == 'E' {
		rollback(conn)
		m.logf("idempotency: the handler answered %d but left its transaction aborted by an error; nothing was stored", rec.status)
		fail(w, http.StatusInternalServerError, "internal error")
		return nil
	}

	headers, err := rec.keptHeaders(m.opt.KeptHeaders)
	if err != nil {
		rollback(conn)
		m.logf("idempotency: encoding the kept headers: %v", err)
		fail(w, http.StatusInternalServerError, "internal error")
		return nil
	}
	b = pgx.Batch{}
	b.Queue(completeSQL, req.key, claim.Token, int32(rec.status), req.scope,
		rec.body.Bytes(), rec.contentType(), headers)
	b.Queue("COMMIT")
	ectx, cancel := context.WithTimeout(context.Background(), endTimeout)
	defer cancel()
	br = conn.SendBatch(ectx, &b)
	var stored bool
	err = br.QueryRow().Scan(&stored)
	if err == nil {
		var tag []byte
		tag, err = br.Exec()
		if err == nil && string(tag) != "COMMIT" {
			err = errors.New("the transaction was rolled back at COMMIT")
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return m.batchFailed(w, conn, "storing the response", err)
	}
	if m.opt.onCommit != nil {
		m.opt.onCommit(r)
	}
	rec.send(w)
	return nil
}

// runHandler calls the handler with the buffered request body and tells
// whether it panicked, and with what.
func runHandler(next http.Handler, rec http.ResponseWriter, r *http.Request, req *request, ctx context.Context) (panicked bool, pv interface{}) {
	r2 := r.WithContext(ctx)
	r2.Body = io.NopCloser(bytes.NewReader(req.body))
	defer func() {
		if v := recover(); v != nil {
			panicked, pv = true, v
		}
	}()
	next.ServeHTTP(rec, r2)
	return false, nil
}

// rollback ends the transaction if one is open. A connection left in a
// transaction (the ROLLBACK failed) is closed by the pool on release.
// A batch of the request's transaction failed: roll back, and either hand
// a serialization failure or deadlock back for the transaction to run
// again, or answer the client (nil).
func (m *Middleware) batchFailed(w http.ResponseWriter, conn *pgxpool.Conn, what string, err error) error {
	rollback(conn)
	if isRetryable(err) {
		return err
	}
	m.dbFailed(w, what, err)
	return nil
}

func rollback(conn *pgxpool.Conn) {
	pc := conn.Conn().PgConn()
	if pc.IsClosed() || pc.TxStatus() == 'I' {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), endTimeout)
	defer cancel()
	conn.Exec(ctx, "ROLLBACK")
}
