--
-- Stored responses as bytes: idem_complete and idem_fail keep a body as the
-- client sent it, with its content type and the headers to replay, and
-- idem_claim hands them back byte for byte.  response jsonb stays for SQL
-- callers.
--
SET search_path = idempotency, public;
\i sql/helpers.psql
\pset null '∅'

-- A body that is not text at all (a NUL, bytes that are not UTF-8), its
-- content type and a header sent twice.
SELECT token AS t1 FROM idem_claim('bytes-1', '1 hour') \gset
SELECT idem_complete('bytes-1', :t1, status => 201,
                     body => '\x00ff7b2262223a20317d0a'::bytea,
                     content_type => 'application/octet-stream',
                     headers => '{"location": "/orders/1", "set-cookie": ["a=1", "b=2"]}') AS completed;
SELECT outcome, response, status, body, content_type, headers
FROM idem_claim('bytes-1', '1 hour');
-- The JSON a client sent keeps its key order and spacing as bytes, which
-- jsonb does not.
SELECT token AS t2 FROM idem_claim('bytes-2', '1 hour') \gset
SELECT idem_complete('bytes-2', :t2, NULL, 200, body => convert_to('{"z": 1,  "a": 2}', 'UTF8'),
                     content_type => 'application/json') AS completed;
SELECT convert_from(body, 'UTF8') AS replayed, content_type, headers
FROM idem_claim('bytes-2', '1 hour');

-- Both kinds at once, and idem_lookup shows the stored columns.
SELECT token AS t3 FROM idem_claim('bytes-3', '1 hour') \gset
SELECT idem_complete('bytes-3', :t3, '{"id": 3}', 200, 'default', 'three', 'text/plain') AS completed;
SELECT outcome, response, status, body, content_type, headers FROM idem_claim('bytes-3', '1 hour');
SELECT state, body, content_type, headers FROM idem_lookup('bytes-3');

-- The same completion again changes nothing; another body, content type
-- or header would be lost, so each is refused.
SELECT idem_complete('bytes-1', :t1, status => 201,
                     body => '\x00ff7b2262223a20317d0a'::bytea,
                     content_type => 'application/octet-stream',
                     headers => '{"set-cookie": ["a=1", "b=2"], "location": "/orders/1"}') AS completed_again;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-1', $$ || :t1 || $$, status => 201,
    body => '\x00'::bytea, content_type => 'application/octet-stream',
    headers => '{"location": "/orders/1", "set-cookie": ["a=1", "b=2"]}')$$) AS other_body;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-1', $$ || :t1 || $$, status => 201,
    body => '\x00ff7b2262223a20317d0a'::bytea, content_type => 'text/plain',
    headers => '{"location": "/orders/1", "set-cookie": ["a=1", "b=2"]}')$$) AS other_content_type;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-1', $$ || :t1 || $$, status => 201,
    body => '\x00ff7b2262223a20317d0a'::bytea, content_type => 'application/octet-stream',
    headers => '{"location": "/orders/2", "set-cookie": ["a=1", "b=2"]}')$$) AS other_headers;
SELECT outcome, body, content_type, headers FROM idem_claim('bytes-1', '1 hour');

-- Headers must be an object of strings or arrays of strings; a refusal
-- leaves the claim in progress, as it was.
SELECT token AS t4 FROM idem_claim('bytes-4', '1 hour') \gset
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '["location"]')$$) AS headers_array;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '{"retry-after": 5}')$$) AS headers_number;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '{"x": {"y": "z"}}')$$) AS headers_nested;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '{"x": [["y"]]}')$$) AS headers_nested_array;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '"location"')$$) AS headers_scalar;
-- Names are HTTP tokens and values have no line break, so that a header
-- replayed as stored cannot end itself and add another.
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '{"x\r\nset-cookie: a": "b"}')$$) AS name_with_newline;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '{"": "x"}')$$) AS empty_name;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '{"x-a b": "x"}')$$) AS name_with_space;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '{"x": "a\r\nset-cookie: b"}')$$) AS value_with_newline;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '{"x": ["ok", "a\nb"]}')$$) AS array_value_with_newline;
-- Nothing a client library would refuse to send: control characters,
-- characters beyond ASCII, framing headers; and content_type is a header
-- value too.
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '{"x": "a\u0001b"}')$$) AS control_character;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '{"x": "5 €"}')$$) AS beyond_ascii;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, headers => '{"Content-Length": "999"}')$$) AS framing_header;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('bytes-4', $$ || :t4 || $$, status => 200, body => 'x', content_type => E'text/plain\r\nset-cookie: a=b')$$) AS content_type_newline;
SELECT pg_temp.fails($$SELECT idempotency.idem_fail('bytes-4', $$ || :t4 || $$, false, status => 400, body => 'x', content_type => '')$$) AS content_type_empty;
SELECT state, body, headers FROM claims WHERE key = 'bytes-4';
SELECT idem_complete('bytes-4', :t4, status => 204, headers => '{}') AS empty_headers_completed;

-- A final failure is replayed like a completion, body included; a
-- retryable one frees the key, and the next owner does not see its body.
SELECT token AS t5 FROM idem_claim('bytes-5', '1 hour') \gset
SELECT idem_fail('bytes-5', :t5, false, status => 409, body => 'card declined', content_type => 'text/plain') AS failed;
SELECT outcome, status, convert_from(body, 'UTF8') AS body, content_type FROM idem_claim('bytes-5', '1 hour');
SELECT token AS t6 FROM idem_claim('bytes-6', '1 hour') \gset
SELECT idem_fail('bytes-6', :t6, true, status => 503, body => 'try again') AS failed;
SELECT outcome, attempts, body FROM idem_claim('bytes-6', '1 hour');

-- An expired claim claimed again starts empty.
SELECT token AS t7 FROM idem_claim('bytes-7', '1 hour') \gset
SELECT idem_complete('bytes-7', :t7, status => 200, body => 'old', content_type => 'text/plain',
                     headers => '{"etag": "1"}') AS completed;
UPDATE claims SET expires_at = clock_timestamp() - interval '1 second' WHERE key = 'bytes-7';
SELECT outcome, body, content_type, headers FROM idem_claim('bytes-7', '1 hour');
SELECT state, body, content_type, headers FROM claims WHERE key = 'bytes-7';
