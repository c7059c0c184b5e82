package idempotency

import (
	"context"
	"errors"
	"fmt"
	"unsafe"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgx/v4"
)

// ErrTxManaged is returned by Commit and Rollback of the request's
// transaction: the middleware ends it (with the completion, or by rolling
// back when the handler answers 5xx or panics).
var ErrTxManaged = errors.New("idempotency: the request's transaction is committed or rolled back by the middleware")

// reqTx is the request's transaction as a pgx.Tx. The middleware opened
// it with a BEGIN sent in the same round trip as the claim, which pgx's own
// Tx cannot be made from. Every error of a statement is noted, so that a
// serialization failure or deadlock the handler swallowed still makes the
// middleware run the request again.
type reqTx struct {
	conn    *pgx.Conn
	failure *attemptState // shared with nested savepoints
}

// attemptState is what one attempt learned from its statements.
type attemptState struct {
	retry      error // the first 40001 or 40P01 met, nil if none
	savepoints int   // savepoints made so far, for their names
}

// note remembers an error that calls for a new attempt and returns err.
func (s *attemptState) note(err error) error {
	if err != nil && s.retry == nil && isRetryable(err) {
		s.retry = err
	}
	return err
}

// isRetryable: serialization failure (also a stale fencing token) or deadlock.
func isRetryable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
}

func (t *reqTx) Begin(ctx context.Context) (pgx.Tx, error) {
	t.failure.savepoints++
	name := fmt.Sprintf("idempotency_sp_%d", t.failure.savepoints)
	if _, err := t.conn.Exec(ctx, "SAVEPOINT "+name); err != nil {
		return nil, t.failure.note(err)
	}
	return &savepoint{reqTx: reqTx{conn: t.conn, failure: t.failure}, name: name}, nil
}

func (t *reqTx) BeginFunc(ctx context.Context, f func(pgx.Tx) error) error {
	return beginFunc(ctx, t, f)
}

func beginFunc(ctx context.Context, t pgx.Tx, f func(pgx.Tx) error) (err error) {
	sp, err := t.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if rbErr := sp.Rollback(ctx); rbErr != nil && !errors.Is(rbErr, pgx.ErrTxClosed) && err == nil {
			err = rbErr
		}
	}()
	if err = f(sp); err != nil {
		return err
	}
	return sp.Commit(ctx)
}

func (t *reqTx) Commit(context.Context) error   { return ErrTxManaged }
func (t *reqTx) Rollback(context.Context) error { return ErrTxManaged }

func (t *reqTx) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	n, err := t.conn.CopyFrom(ctx, table, cols, src)
	return n, t.failure.note(err)
}

func (t *reqTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return &noteBatch{BatchResults: t.conn.SendBatch(ctx, b), s: t.failure}
}

// loShadow has pgx.LargeObjects' layout (a single Tx field), the only way
// to hand pgx's large-object calls a Tx that pgx did not make.
type loShadow struct{ tx pgx.Tx }

var (
	_ [unsafe.Sizeof(pgx.LargeObjects{}) - unsafe.Sizeof(loShadow{})]struct{}
	_ [unsafe.Sizeof(loShadow{}) - unsafe.Sizeof(pgx.LargeObjects{})]struct{}
)

func (t *reqTx) LargeObjects() pgx.LargeObjects {
	var lo pgx.LargeObjects
	(*loShadow)(unsafe.Pointer(&lo)).tx = t
	return lo
}

func (t *reqTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	sd, err := t.conn.Prepare(ctx, name, sql)
	return sd, t.failure.note(err)
}

func (t *reqTx) Exec(ctx context.Context, sql string, args ...interface{}) (pgconn.CommandTag, error) {
	tag, err := t.conn.Exec(ctx, sql, args...)
	return tag, t.failure.note(err)
}

func (t *reqTx) Query(ctx context.Context, sql string, args ...interface{}) (pgx.Rows, error) {
	rows, err := t.conn.Query(ctx, sql, args...)
	if err != nil {
		return rows, t.failure.note(err)
	}
	return &noteRows{Rows: rows, s: t.failure}, nil
}

func (t *reqTx) QueryRow(ctx context.Context, sql string, args ...interface{}) pgx.Row {
	return noteRow{row: t.conn.QueryRow(ctx, sql, args...), s: t.failure}
}

func (t *reqTx) QueryFunc(ctx context.Context, sql string, args []interface{}, scans []interface{}, f func(pgx.QueryFuncRow) error) (pgconn.CommandTag, error) {
	tag, err := t.conn.QueryFunc(ctx, sql, args, scans, f)
	return tag, t.failure.note(err)
}

func (t *reqTx) Conn() *pgx.Conn { return t.conn }

// savepoint is a pseudo nested transaction inside the request's one.
type savepoint struct {
	reqTx
	name   string
	closed bool
}

func (s *savepoint) Begin(ctx context.Context) (pgx.Tx, error) {
	if s.closed {
		return nil, pgx.ErrTxClosed
	}
	return s.reqTx.Begin(ctx)
}

func (s *savepoint) BeginFunc(ctx context.Context, f func(pgx.Tx) error) error {
	return beginFunc(ctx, s, f)
}

func (s *savepoint) Commit(ctx context.Context) error {
	if s.closed {
		return pgx.ErrTxClosed
	}
	s.closed = true
	_, err := s.conn.Exec(ctx, "RELEASE SAVEPOINT "+s.name)
	return s.failure.note(err)
}

func (s *savepoint) Rollback(ctx context.Context) error {
	if s.closed {
		return pgx.ErrTxClosed
	}
	s.closed = true
	_, err := s.conn.Exec(ctx, "ROLLBACK TO SAVEPOINT "+s.name)
	return s.failure.note(err)
}

func (s *savepoint) LargeObjects() pgx.LargeObjects {
	var lo pgx.LargeObjects
	(*loShadow)(unsafe.Pointer(&lo)).tx = s
	return lo
}

type noteRows struct {
	pgx.Rows
	s *attemptState
}

func (r *noteRows) Err() error { return r.s.note(r.Rows.Err()) }
func (r *noteRows) Close()     { r.Rows.Close(); r.s.note(r.Rows.Err()) }

type noteRow struct {
	row pgx.Row
	s   *attemptState
}

func (r noteRow) Scan(dest ...interface{}) error { return r.s.note(r.row.Scan(dest...)) }

type noteBatch struct {
	pgx.BatchResults
	s *attemptState
}

func (b *noteBatch) Exec() (pgconn.CommandTag, error) {
	tag, err := b.BatchResults.Exec()
	return tag, b.s.note(err)
}

func (b *noteBatch) Query() (pgx.Rows, error) {
	rows, err := b.BatchResults.Query()
	if err != nil {
		return rows, b.s.note(err)
	}
	return &noteRows{Rows: rows, s: b.s}, nil
}

func (b *noteBatch) QueryRow() pgx.Row {
	return noteRow{row: b.BatchResults.QueryRow(), s: b.s}
}

func (b *noteBatch) QueryFunc(scans []interface{}, f func(pgx.QueryFuncRow) error) (pgconn.CommandTag, error) {
	tag, err := b.BatchResults.QueryFunc(scans, f)
	return tag, b.s.note(err)
}

func (b *noteBatch) Close() error { return b.s.note(b.BatchResults.Close()) }
