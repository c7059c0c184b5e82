// Command orders serves POST /orders behind the idempotency middleware:
// the order row and the stored answer commit together, and a retried
// request gets the first answer back, byte for byte.
//
//	psql -c 'CREATE EXTENSION IF NOT EXISTS idempotency' \
//	     -c 'CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY, body jsonb NOT NULL)'
//	PGDATABASE=shop go run ./examples/orders
//	curl -i -X POST -H 'Idempotency-Key: 8e0c' -d '{"sku": "a1"}' localhost:8080/orders
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"

	idempotency "github.com/idempotency/idempotency/clients/go"
	"github.com/jackc/pgx/v4/pgxpool"
)

func main() {
	pool, err := pgxpool.Connect(context.Background(), "") // PGHOST, PGDATABASE, ...
	if err != nil {
		log.Fatal(err)
	}
	mw := idempotency.New(pool, idempotency.Options{Required: true, WaitFor: 5 * time.Second})
	http.Handle("/orders", mw.Wrap(http.HandlerFunc(createOrder)))
	log.Fatal(http.ListenAndServe("localhost:8080", nil))
}

func createOrder(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	tx := idempotency.Tx(r.Context()) // the transaction that holds the claim
	var id idempotency.Snowflake
	err := tx.QueryRow(r.Context(),
		`INSERT INTO orders (id, body) VALUES (idempotency.snowflake_id(), $1) RETURNING id`,
		body).Scan(&id)
	if err != nil {
		http.Error(w, "could not create the order", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Location", "/orders/"+id.String())
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"id": "%s"}`, id)
}
