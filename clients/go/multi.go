package idempotency

import (
	"context"
	"fmt"
	"net/http"
)

// serveMulti commits the claim at once, with a lease, and runs the handler
// outside any transaction: for handlers that call other systems, which see
// the fencing token. A duplicate that waits (WaitFor) holds no transaction
// while the owner works. The completion is one autocommit statement; a
// stale token there (someone took over after the lease ran out) is 409.
func (m *Middleware) serveMulti(w http.ResponseWriter, r *http.Request, next http.Handler, req *request) {
	ctx := r.Context()
	var claim Claim
	for attempt := 0; ; attempt++ {
		var row claimRow
		sql, args := claimQuery(req.key, req.scope, req.fingerprint, m.opt.TTL, m.opt.Lease, m.opt.WaitFor)
		err := m.pool.QueryRow(ctx, sql, args...).Scan(row.dest()...)
		if err == nil {
			claim = row.claim()
			break
		}
		if !isRetryable(err) {
			m.dbFailed(w, "claiming the key", err)
			return
		}
		if attempt >= m.opt.Retries {
			m.dbFailed(w, fmt.Sprintf("gave up after %d attempts", attempt+1), err)
			return
		}
	}
	if !claim.owns() {
		m.answerOthers(w, &claim)
		return
	}

	a := &Attempt{Key: req.key, Scope: req.scope, Token: claim.Token,
		Attempts: claim.Attempts, RecoveryPoint: claim.RecoveryPoint, db: m.pool}
	rec := newRecorder()
	panicked, pv := runHandler(next, rec, r, req, context.WithValue(ctx, attemptKey, a))
	rec.finish()
	if panicked || rec.status >= 500 {
		// Nothing is stored: the next caller takes over at once.
		ectx, cancel := context.WithTimeout(context.Background(), endTimeout)
		defer cancel()
		if _, err := m.pool.Exec(ectx, failSQL, req.key, claim.Token, req.scope); err != nil {
			m.logf("idempotency: ending a failed attempt (the key is free again when its lease runs out): %v", err)
		}
		if pv == http.ErrAbortHandler {
			panic(pv)
		}
		if panicked {
			m.logf("idempotency: handler panicked: %v", pv)
			fail(w, http.StatusInternalServerError, "internal error")
		} else {
			rec.send(w)
		}
		return
	}

	headers, err := rec.keptHeaders(m.opt.KeptHeaders)
	if err != nil {
		m.logf("idempotency: encoding the kept headers: %v", err)
		fail(w, http.StatusInternalServerError, "internal error")
		return
	}
	ectx, cancel := context.WithTimeout(context.Background(), endTimeout)
	defer cancel()
	var stored bool
	err = m.pool.QueryRow(ectx, completeSQL, req.key, claim.Token, int32(rec.status), req.scope,
		rec.body.Bytes(), rec.contentType(), headers).Scan(&stored)
	if err != nil {
		if isRetryable(err) {
			m.logf("idempotency: completing a claim: %v", err)
			fail(w, http.StatusConflict, "this request's claim was taken over by another attempt")
			return
		}
		m.dbFailed(w, "storing the response", err)
		return
	}
	if m.opt.onCommit != nil {
		m.opt.onCommit(r)
	}
	rec.send(w)
}
