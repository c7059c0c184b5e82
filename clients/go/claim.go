package idempotency

import (
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"time"

	"github.com/jackc/pgtype"
)

// Outcome is the idempotency.idem_outcome enum, as text.
type Outcome string

// The outcomes idem_claim reports.
const (
	Claimed    Outcome = "claimed"     // the caller owns the key: run the work
	Reclaimed  Outcome = "reclaimed"   // the caller took over a failed or lapsed claim
	Completed  Outcome = "completed"   // a stored response: replay it
	InProgress Outcome = "in_progress" // another caller owns the key
	Mismatch   Outcome = "mismatch"    // the key was used with another fingerprint
)

// Claim is a row of idempotency.idem_claim_result. Columns that are NULL
// arrive as the zero value: Token is 0 unless the caller owns the key
// (tokens start at 1), Status is 0 when no status was stored, Response,
// Body and Headers are nil when NULL.
type Claim struct {
	Outcome       Outcome         // outcome idem_outcome
	Token         int64           // token bigint: the fencing token
	Response      json.RawMessage // response jsonb, as the server sent it
	Status        int             // status int
	RecoveryPoint string          // recovery_point text
	Attempts      int             // attempts int
	ExpiresAt     time.Time       // expires_at timestamptz
	Body          []byte          // body bytea, byte for byte
	ContentType   string          // content_type text
	Headers       json.RawMessage // headers jsonb: lower-case name -> string or array of strings
}

// owns tells whether the caller holds the key and must run the work.
func (c *Claim) owns() bool {
	return c.Outcome == Claimed || c.Outcome == Reclaimed
}

// The claim is one of two fixed texts, so that pgx prepares it once per
// connection: without a bound, wait => false (a duplicate is told
// in_progress at once, whether the claim it meets is committed or not),
// or with one, wait_for => the bound (the server bounds every wait on the
// key). NULL arguments mean the server's defaults (the scope's ttl and
// lease).
const (
	claimSQL = `SELECT outcome::text, token, response, status, recovery_point, attempts,
       expires_at, body, content_type, headers
  FROM idempotency.idem_claim($1, ttl => $2::interval, fingerprint => $3::bytea,
       scope => $4, lease => $5::interval, wait => false)`
	claimWaitSQL = `SELECT outcome::text, token, response, status, recovery_point, attempts,
       expires_at, body, content_type, headers
  FROM idempotency.idem_claim($1, ttl => $2::interval, fingerprint => $3::bytea,
       scope => $4, lease => $5::interval, wait_for => $6::interval)`
)

// claimQuery is the claim's text and parameters.
func claimQuery(key, scope string, fingerprint []byte, ttl, lease, waitFor time.Duration) (string, []interface{}) {
	args := []interface{}{key, interval(ttl), fingerprint, scope, interval(lease)}
	if waitFor <= 0 {
		return claimSQL, args
	}
	return claimWaitSQL, append(args, interval(waitFor))
}

// interval turns a duration into an interval parameter, 0 into NULL.
func interval(d time.Duration) interface{} {
	if d <= 0 {
		return nil
	}
	return pgtype.Interval{Microseconds: d.Microseconds(), Status: pgtype.Present}
}

// claimRow scans a row of claimSQL.
type claimRow struct {
	outcome       string
	token         pgtype.Int8
	response      pgtype.JSONB
	status        pgtype.Int4
	recoveryPoint pgtype.Text
	attempts      pgtype.Int4
	expiresAt     pgtype.Timestamptz
	body          pgtype.Bytea
	contentType   pgtype.Text
	headers       pgtype.JSONB
}

func (r *claimRow) dest() []interface{} {
	return []interface{}{&r.outcome, &r.token, &r.response, &r.status, &r.recoveryPoint,
		&r.attempts, &r.expiresAt, &r.body, &r.contentType, &r.headers}
}

func (r *claimRow) claim() Claim {
	c := Claim{Outcome: Outcome(r.outcome), Token: r.token.Int,
		Status: int(r.status.Int), RecoveryPoint: r.recoveryPoint.String,
		Attempts: int(r.attempts.Int), ExpiresAt: r.expiresAt.Time,
		ContentType: r.contentType.String}
	if r.response.Status == pgtype.Present {
		c.Response = json.RawMessage(r.response.Bytes)
	}
	if r.body.Status == pgtype.Present {
		c.Body = r.body.Bytes
		if c.Body == nil {
			c.Body = []byte{}
		}
	}
	if r.headers.Status == pgtype.Present {
		c.Headers = json.RawMessage(r.headers.Bytes)
	}
	return c
}

// completeSQL stores the captured response; failSQL ends an attempt that
// must run again (multi-transaction mode).
const (
	completeSQL = `SELECT idempotency.idem_complete($1, $2, NULL, $3, $4,
       body => $5::bytea, content_type => $6, headers => $7::jsonb)`
	failSQL       = `SELECT idempotency.idem_fail($1, $2, true, scope => $3)`
	checkpointSQL = `SELECT idempotency.idem_checkpoint($1, $2, $3, $4)`
	extendSQL     = `SELECT idempotency.idem_extend($1, $2, $3::interval, $4)`
)

// Fingerprint is SHA-256 over METHOD + " " + request-target + "\n" + body,
// the same bytes in the Go, Node and Python clients.
func Fingerprint(method, target string, body []byte) []byte {
	h := sha256.New()
	h.Write([]byte(method))
	h.Write([]byte(" "))
	h.Write([]byte(target))
	h.Write([]byte("\n"))
	h.Write(body)
	return h.Sum(nil)
}

// requestTarget is the path and query as the client sent them.
func requestTarget(r *http.Request) string {
	if r.RequestURI != "" {
		return r.RequestURI
	}
	return r.URL.RequestURI()
}
