--
-- idem_fingerprint with paths: any key can be named (dotted steps, or a
-- text array as #> takes it for keys with dots), both spellings of a path
-- fingerprint alike, and documents that differ at a path never fingerprint
-- alike: a missing key differs from a null, and a document of another
-- shape than the path expects (a scalar where an object was expected)
-- counts with the value that stopped the path.  Whole documents: claims.sql.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

-- A key with a dot in it, named as #> names it.
SELECT idem_fingerprint('{"a.b": 1}', ARRAY['{a.b}'])
    <> idem_fingerprint('{"a.b": 2}', ARRAY['{a.b}']) AS dotted_key_counts,
       idem_fingerprint('{"a.b": 1}', ARRAY['{a.b}'])
    <> idem_fingerprint('{"a": {"b": 1}}', ARRAY['{a.b}']) AS not_a_nested_key,
       idem_fingerprint('{"a.b": 1, "x": 1}', ARRAY['{a.b}'])
     = idem_fingerprint('{"x": 2, "a.b": 1.0}', ARRAY['{a.b}']) AS only_the_path_counts,
       ('{"a.b": 1}'::jsonb #> '{a.b}') = '1' AS as_hash_greater;

-- Both spellings of one path are one path.
SELECT idem_fingerprint('{"customer": {"id": 7}}', ARRAY['customer.id'])
     = idem_fingerprint('{"customer": {"id": 7}}', ARRAY['{customer,id}']) AS same_path,
       idem_fingerprint('{"customer": {"id": 7}}', ARRAY['{ customer , "id" }'])
     = idem_fingerprint('{"customer": {"id": 7}}', ARRAY['customer.id', '{customer,id}']) AS spaces_quotes_repeats,
       idem_fingerprint('{"items": [{"sku": "a"}]}', ARRAY['{items,0,sku}'])
    <> idem_fingerprint('{"items": [{"sku": "b"}]}', ARRAY['{items,0,sku}']) AS array_index;

-- Keys no dotted path can name.
SELECT idem_fingerprint('{"x,y": 1}', ARRAY['{"x,y"}'])
    <> idem_fingerprint('{"x,y": 2}', ARRAY['{"x,y"}']) AS comma,
       idem_fingerprint('{"": 1}', ARRAY['{""}'])
    <> idem_fingerprint('{"": 2}', ARRAY['{""}']) AS empty_key,
       idem_fingerprint('{"NULL": 1}', ARRAY['{"NULL"}'])
    <> idem_fingerprint('{"NULL": 2}', ARRAY['{"NULL"}']) AS key_spelled_null,
       idem_fingerprint('{"{a}": 1}', ARRAY['{"{a}"}'])
    <> idem_fingerprint('{"{a}": 2}', ARRAY['{"{a}"}']) AS braces,
       idem_fingerprint('{"q\"": 1}', ARRAY['{q\"}'])
    <> idem_fingerprint('{"q\"": 2}', ARRAY['{q\"}']) AS escaped_quote;

-- Missing, null, and documents of another shape.
SELECT idem_fingerprint('{"a": null}', ARRAY['{a}'])
    <> idem_fingerprint('{}', ARRAY['{a}']) AS missing_is_not_null,
       idem_fingerprint('1', ARRAY['a'])
    <> idem_fingerprint('2', ARRAY['a']) AS scalar_documents,
       idem_fingerprint('"a"', ARRAY['a'])
    <> idem_fingerprint('{}', ARRAY['a']) AS scalar_is_not_missing,
       idem_fingerprint('{"a": 5}', ARRAY['a.b'])
    <> idem_fingerprint('{"a": 6}', ARRAY['a.b']) AS scalar_on_the_way,
       idem_fingerprint('{"items": [1]}', ARRAY['items.x'])
    <> idem_fingerprint('{"items": [2]}', ARRAY['items.x']) AS word_into_array,
       idem_fingerprint('{"a": {}}', ARRAY['a.b'])
     = idem_fingerprint('{"a": {"c": 1}}', ARRAY['a.b']) AS missing_alike,
       idem_fingerprint('{"items": [1]}', ARRAY['items.5'])
     = idem_fingerprint('{"items": [1, 2]}', ARRAY['items.5']) AS past_the_end_alike;

-- Paths that are not paths.
SELECT pg_temp.fails($$SELECT idempotency.idem_fingerprint('{}', ARRAY['{}'])$$) AS no_steps;
SELECT pg_temp.fails($$SELECT idempotency.idem_fingerprint('{}', ARRAY['{a,}'])$$) AS empty_step;
SELECT pg_temp.fails($$SELECT idempotency.idem_fingerprint('{}', ARRAY['{a,NULL}'])$$) AS null_step;
SELECT pg_temp.fails($$SELECT idempotency.idem_fingerprint('{}', ARRAY['{"a}'])$$) AS unclosed_quote;
SELECT pg_temp.fails($$SELECT idempotency.idem_fingerprint('{}', ARRAY['{a}b'])$$) AS after_brace;
SELECT pg_temp.fails($$SELECT idempotency.idem_fingerprint('{}', ARRAY['{a{b}'])$$) AS inner_brace;
SELECT pg_temp.fails($$SELECT idempotency.idem_fingerprint('{}', ARRAY['{a'])$$) AS no_closing_brace;

-- A claim made with a path-only fingerprint: a reused key with another
-- value at the path is a mismatch, not a replay.
SELECT (idem_claim('fp-dot', '1 hour', idem_fingerprint('{"a.b": 1}', ARRAY['{a.b}']))).token AS t \gset
SELECT idem_complete('fp-dot', :t, '{"ok": true}', 200);
SELECT outcome FROM idem_claim('fp-dot', '1 hour', idem_fingerprint('{"a.b": 2}', ARRAY['{a.b}']));
SELECT outcome FROM idem_claim('fp-dot', '1 hour', idem_fingerprint('{"a.b": 1, "c": 3}', ARRAY['{a.b}']));
DELETE FROM claims WHERE key = 'fp-dot';
