package idempotency

import (
	"database/sql/driver"
	"fmt"
)

// Snowflake is an idempotency.snowflake as its decimal text. Snowflakes
// run past 2^53, beyond what a float64 (JSON numbers in many languages)
// holds exactly, so they cross this client as strings, as in the Node and
// Python clients. Scan a snowflake column into a *Snowflake (or a
// *string); pass a Snowflake as a parameter and it is sent as text.
type Snowflake string

// Scan implements sql.Scanner; pgx sends a snowflake in text format,
// since it does not know the type.
func (s *Snowflake) Scan(src interface{}) error {
	switch v := src.(type) {
	case nil:
		*s = ""
	case string:
		*s = Snowflake(v)
	case []byte:
		*s = Snowflake(v)
	case int64:
		*s = Snowflake(fmt.Sprint(v))
	default:
		return fmt.Errorf("idempotency: cannot scan %T into a Snowflake", src)
	}
	return nil
}

// Value implements driver.Valuer: the decimal text, NULL when empty.
func (s Snowflake) Value() (driver.Value, error) {
	if s == "" {
		return nil, nil
	}
	return string(s), nil
}

func (s Snowflake) String() string { return string(s) }
