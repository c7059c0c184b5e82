// Command payments shows the multi-transaction mode, for a handler that
// calls another system: the claim commits at once with a lease, the
// handler passes the fencing token on and checkpoints its progress, and a
// duplicate waits for the answer instead of getting 409.
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	idempotency "github.com/idempotency/idempotency/clients/go"
	"github.com/jackc/pgx/v4/pgxpool"
)

func main() {
	pool, err := pgxpool.Connect(context.Background(), "")
	if err != nil {
		log.Fatal(err)
	}
	mw := idempotency.New(pool, idempotency.Options{
		Required:         true,
		MultiTransaction: true,
		Lease:            30 * time.Second,
		WaitFor:          10 * time.Second,
	})
	http.Handle("/payments", mw.Wrap(http.HandlerFunc(pay)))
	log.Fatal(http.ListenAndServe("localhost:8081", nil))
}

func pay(w http.ResponseWriter, r *http.Request) {
	a := idempotency.AttemptFrom(r.Context())
	if a.RecoveryPoint != "charged" {
		// charge(a.Token): the gateway refuses a token lower than one it saw
		if err := a.Checkpoint(r.Context(), "charged"); err != nil {
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
	}
	if _, err := a.Extend(r.Context(), 30*time.Second); err != nil { // before a long step
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"paid": true, "attempt": %d}`, a.Attempts)
}
