-- What each request did on its backend in each of the given intervals (docs/energy.md,
-- "Attribution"), in the components the energy model prices:
--   prefill_tokens  its uncached prompt tokens, spread evenly over the computation of its
--                   prompt (see "stack" below; the whole wait for its first token when the
--                   backend's prefill rate is not known)
--   prefills        its share of a prefill pass in the interval (0..1): the prompts computed
--                   in one engine step share its pass by their uncached tokens (evenly when
--                   none has any), as the pass's fixed work serves every token in it
--   decode_tokens   its completion tokens, spread evenly over the time in [first token,
--                   end] in which no prompt was computed (decoding waits then)
--   decode_seconds  its share of the interval's decode time, by the batch it was shared in:
--                   at each moment the sequences decoding share the GPUs equally, as
--                   continuous batching runs them, except while a prompt is being computed
--                   (the prompt has the GPUs then). Element j holds the shares weighed by how
--                   near the batch was to 2^j sequences (1, 2, 4, ..., 256: the knots of the
--                   decode power curve, metering.attribution.BATCH_KNOTS; linear between two
--                   knots, all on the last beyond it), so a power curve given at the knots
--                   prices them by a dot product.
--   busy            the part of [computation start, end] inside the interval
-- Before its prompt is computed a request is travelling or waiting, which is no work. An
-- answer that was not streamed has no first-token time: the backend's usual time to first
-- token for that many prompt tokens stands in. A span of zero length counts whole in the
-- interval holding its instant ([start, end)). Rows that did no work are left out: a request
-- that moved no tokens did not use the GPUs.
-- Parameters: ids (intervals), backends, ttft_seconds, ttft_seconds_per_token,
-- prefill_seconds (parallel arrays), lower and upper (the started_at range: prunes the
-- ledger's monthly partitions),
-- after (earliest interval start: the ended_at BRIN index skips every request that finished
-- before it).
CREATE TEMP TABLE energy_work ON COMMIT DROP AS
-- MATERIALIZED: each is read once. Inlined, the planner (which cannot estimate the time
-- conditions) may rescan the ledger once per interval.
WITH selected AS MATERIALIZED (
    SELECT id, backend, started_at, ended_at,
           date_part('epoch', started_at) AS s, date_part('epoch', ended_at) AS e
    FROM metering_energyinterval
    WHERE id = ANY(%(ids)s::bigint[])
),
record AS MATERIALIZED (
    SELECT u.request_id, u.started_at, u.backend, u.ended_at,
           u.prompt_tokens - u.cached_prompt_tokens AS prompt,
           u.completion_tokens AS output,
           m.ttft_seconds_per_token, m.prefill_seconds,
           m.step_seconds, m.step_seconds_per_sequence,
           least(u.ended_at, u.started_at + u.queue_wait_ms * interval '1 ms') AS active_from,
           least(u.ended_at, greatest(
               u.started_at + u.queue_wait_ms * interval '1 ms',
               coalesce(
                   u.started_at + u.ttft_ms * interval '1 ms',
                   -- Without output the whole span was prefill.
                   CASE WHEN u.completion_tokens = 0 THEN u.ended_at END,
                   u.started_at + u.queue_wait_ms * interval '1 ms'
                       + (m.ttft_seconds + m.ttft_seconds_per_token
                          * (u.prompt_tokens - u.cached_prompt_tokens)) * interval '1 s'
               )
           )) AS first_token
    FROM metering_usagerecord AS u
    JOIN unnest(%(backends)s::text[], %(ttft_seconds)s::float8[],
                %(ttft_seconds_per_token)s::float8[], %(prefill_seconds)s::float8[],
                %(decode_step_seconds)s::float8[],
                %(decode_step_seconds_per_sequence)s::float8[])
        AS m (backend, ttft_seconds, ttft_seconds_per_token, prefill_seconds, step_seconds,
              step_seconds_per_sequence)
        ON m.backend = u.backend
    WHERE u.started_at >= %(lower)s AND u.started_at < %(upper)s
        AND u.ended_at >= %(after)s
        AND u.prompt_tokens::bigint - u.cached_prompt_tokens + u.completion_tokens > 0
),
-- The prompt computations, stacked. An engine computes prompts one step at a time, each
-- step's in one pass: `prefill_seconds` for the pass plus `ttft_seconds_per_token` for each
-- token, and the step's prompts all get their first token at its end. So going back from the
-- latest first token, each prompt's tokens are computed just before its first token, or
-- before the next prompt's computation if that began earlier: then the two were in one step
-- and the later one's pass was theirs. Computations never overlap, and prompts computed
-- together take as long as the sum of their tokens' times and one pass (placing each before
-- its own first token, as a first version did, overlapped them and left the decoders time
-- they did not have). Ordered by first token, with T = the seconds of the tokens from this
-- prompt's on and g = first token - pass + the seconds of the later prompts' tokens:
--     start = min(g of this and every later prompt) - T,
-- and a prompt whose own g is below every later one's ends a step (its `head`): it holds the
-- pass (one whose g ties a later one's, as a cached prompt's does, is in the later step).
stack AS (
    SELECT *, min(g) OVER later - tokens_after AS stacked_from,
           g < coalesce(min(g) OVER strictly_later, 'infinity') AS head
    FROM (
        SELECT *, date_part('epoch', first_token) - prefill_seconds + tokens_after
                  - ttft_seconds_per_token * prompt AS g
        FROM (
            SELECT *, sum(ttft_seconds_per_token * prompt) OVER later AS tokens_after
            FROM record
            WHERE ttft_seconds_per_token > 0
            WINDOW later AS (PARTITION BY backend ORDER BY first_token DESC, request_id DESC
                             ROWS UNBOUNDED PRECEDING)
        ) AS r
    ) AS r
    WINDOW by_first AS (PARTITION BY backend ORDER BY first_token DESC, request_id DESC),
           later AS (by_first ROWS UNBOUNDED PRECEDING),
           strictly_later AS (by_first ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
),
step AS (
    -- Steps numbered from the latest: a prompt is in the step of the first head at or after
    -- it.
    SELECT request_id, stacked_from, head,
           sum(head::int) OVER (PARTITION BY backend ORDER BY first_token DESC,
                                request_id DESC ROWS UNBOUNDED PRECEDING) AS step
    FROM stack
),
-- On the GPUs from the computation of its prompt to its end; before that it only travelled
-- and waited (a stacked start before its arrival at the backend is moved up to it). Without
-- a known prefill rate the whole wait for the first token counts, and nothing is stacked.
span AS (
    SELECT r.request_id, r.started_at, r.backend, r.busy_from, r.ended_at, r.prompt, r.output,
           r.placed, coalesce(r.share, 1) AS share, r.step_seconds, r.step_seconds_per_sequence,
           date_part('epoch', r.busy_from) AS a,
           date_part('epoch', r.computed_by) AS c,
           date_part('epoch', r.first_token) AS f,
           date_part('epoch', r.ended_at) AS z
    FROM (
        SELECT r.*, s.step IS NOT NULL AS placed,
               coalesce(least(r.first_token, greatest(r.active_from,
                   to_timestamp(s.stacked_from))), r.active_from) AS busy_from,
               coalesce(least(r.first_token, greatest(r.active_from,
                   to_timestamp(s.stacked_from + r.ttft_seconds_per_token * r.prompt
                                + CASE WHEN s.head THEN r.prefill_seconds ELSE 0 END))),
                   r.first_token) AS computed_by,
               CASE WHEN s.step IS NOT NULL THEN coalesce(
                   r.prompt / nullif(sum(r.prompt) OVER step, 0)::float8,
                   1.0 / count(*) OVER step) END AS share
        FROM record AS r
        LEFT JOIN step AS s ON s.request_id = r.request_id AND r.ttft_seconds_per_token > 0
        WINDOW step AS (PARTITION BY r.backend, s.step)
    ) AS r
),
overlap AS (
    SELECT i.id AS interval_id, r.request_id, r.started_at, r.prompt, r.output, r.share,
           r.step_seconds, r.step_seconds_per_sequence,
           tstzrange(greatest(r.busy_from, i.started_at), least(r.ended_at, i.ended_at)) AS busy,
           CASE
               WHEN r.c > r.a THEN greatest(0, least(r.c, i.e) - greatest(r.a, i.s)) / (r.c - r.a)
               WHEN r.a >= i.s AND r.a < i.e THEN 1
               ELSE 0
           END AS computed,
           CASE
               WHEN r.z > r.f THEN greatest(0, least(r.z, i.e) - greatest(r.f, i.s)) / (r.z - r.f)
               WHEN r.f >= i.s AND r.f < i.e THEN 1
               ELSE 0
           END AS decodes,
           r.z - r.f AS decode_span,
           -- Inside the interval: when it decoded and when its prompt was computed; null
           -- when it did not (a null never matches in the joins below).
           CASE WHEN r.output > 0 AND least(r.z, i.e) > greatest(r.f, i.s)
               THEN greatest(r.f, i.s) END AS decode_from,
           CASE WHEN r.output > 0 AND least(r.z, i.e) > greatest(r.f, i.s)
               THEN least(r.z, i.e) END AS decode_to,
           CASE WHEN r.placed AND least(r.c, i.e) > greatest(r.a, i.s)
               THEN greatest(r.a, i.s) END AS compute_from,
           CASE WHEN r.placed AND least(r.c, i.e) > greatest(r.a, i.s)
               THEN least(r.c, i.e) END AS compute_to
    FROM selected AS i
    JOIN span AS r
        ON r.backend = i.backend AND r.busy_from < i.ended_at AND r.ended_at >= i.started_at
),
-- The decode sweep. Each interval's decode spans and prompt computations become events; between
-- two events `decoding` sequences decode and `computing` prompts are computed, and while no
-- prompt is, every decoding sequence gets 1/decoding of each second. `shared` integrates that
-- from the interval's start, so a request's decode_seconds is `shared` at its decode end minus
-- at its decode start, both of which are events.
event AS (
    SELECT interval_id, t, sum(decoding) AS decoding, sum(computing) AS computing
    FROM (
        SELECT interval_id, decode_from AS t, 1 AS decoding, 0 AS computing
        FROM overlap WHERE decode_from IS NOT NULL
        UNION ALL
        SELECT interval_id, decode_to, -1, 0 FROM overlap WHERE decode_from IS NOT NULL
        UNION ALL
        SELECT interval_id, compute_from, 0, 1 FROM overlap WHERE compute_from IS NOT NULL
        UNION ALL
        SELECT interval_id, compute_to, 0, -1 FROM overlap WHERE compute_from IS NOT NULL
    ) AS e
    GROUP BY interval_id, t
),
level AS (
    SELECT interval_id, t,
           sum(decoding) OVER (PARTITION BY interval_id ORDER BY t)::float8 AS decoding,
           sum(computing) OVER (PARTITION BY interval_id ORDER BY t) AS computing,
           lead(t) OVER (PARTITION BY interval_id ORDER BY t) - t AS lasts
    FROM event
),
-- `shared` (and `flowing`, the unstalled seconds) integrated from the interval's start, and
-- `shared` by batch knot: at{k} weighs each moment's share by the knot's hat function of the
-- batch (1 at k sequences, falling linearly to 0 at the knots either side: k/2 and 2k; a
-- batch past the last knot counts as at it), so that a moment's weights sum to 1 over the
-- knots.
curve AS (
    SELECT interval_id, t,
           coalesce(sum(share) OVER running, 0) AS shared,
           coalesce(sum(CASE WHEN share IS NOT NULL THEN lasts END) OVER running, 0) AS flowing,
           coalesce(sum(share * greatest(0, least(2 * b / 1 - 1, 2 - b / 1)))
                    OVER running, 0) AS at1,
           coalesce(sum(share * greatest(0, least(2 * b / 2 - 1, 2 - b / 2)))
                    OVER running, 0) AS at2,
           coalesce(sum(share * greatest(0, least(2 * b / 4 - 1, 2 - b / 4)))
                    OVER running, 0) AS at4,
           coalesce(sum(share * greatest(0, least(2 * b / 8 - 1, 2 - b / 8)))
                    OVER running, 0) AS at8,
           coalesce(sum(share * greatest(0, least(2 * b / 16 - 1, 2 - b / 16)))
                    OVER running, 0) AS at16,
           coalesce(sum(share * greatest(0, least(2 * b / 32 - 1, 2 - b / 32)))
                    OVER running, 0) AS at32,
           coalesce(sum(share * greatest(0, least(2 * b / 64 - 1, 2 - b / 64)))
                    OVER running, 0) AS at64,
           coalesce(sum(share * greatest(0, least(2 * b / 128 - 1, 2 - b / 128)))
                    OVER running, 0) AS at128,
           coalesce(sum(share * greatest(0, least(2 * b / 256 - 1, 2 - b / 256)))
                    OVER running, 0) AS at256
    FROM (
        SELECT *, CASE WHEN decoding > 0 AND computing = 0 THEN lasts / decoding END AS share,
               least(decoding, 256) AS b  -- the batch, at the last knot from there on
        FROM level
    ) AS l
    WINDOW running AS (PARTITION BY interval_id ORDER BY t
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
)
-- The decode steps a request took, against the time the gateway saw it decode. It made one
-- token a step after its first, and a step over n sequences lasts step_seconds +
-- step_seconds_per_sequence * n (the engine's own figures, fitted by calibration), so its
-- output says how long it decoded, better than the gateway's first token and end: those are
-- late by the network and the gateway's own work (at the simulator's speedup a millisecond
-- is a tenth of a short answer's span), and a stream read slowly ends late. Its shares are
-- scaled to the steps it took in these intervals (its output times the part of its decode
-- span in them), at the mean batch it shared them with (its unstalled seconds over its
-- shares). Without the engine's figures the gateway's span stands.
SELECT interval_id, request_id, started_at, busy, prefill_tokens, prefills,
       -- Tokens are made only while no prompt is computed: a request's output is spread over
       -- the time it decoded unstalled, so a span stretched by stalls still makes all of it,
       -- faster in between. Its time outside these intervals counts as unstalled.
       CASE
           WHEN flowed IS NULL OR NOT flowed_total > 0 THEN output * decodes
           ELSE output * flowed / flowed_total
       END AS decode_tokens,
       ARRAY(SELECT coalesce(seconds, 0) * steps
             FROM unnest(by_batch) WITH ORDINALITY AS u (seconds, j) ORDER BY j) AS decode_seconds,
       0::float8 AS work  -- priced by energy_price.sql
FROM (
    SELECT *, flowed_here + decode_span - span_here AS flowed_total,
           CASE WHEN step_seconds > 0 AND output > 1 AND decode_span > 0 AND shared_here > 0
                     AND flowed_here > 0
               THEN (output - 1) * span_here / decode_span
                    * (step_seconds + step_seconds_per_sequence * flowed_here / shared_here)
                    / flowed_here
               ELSE 1
           END AS steps
    FROM (
        SELECT o.interval_id, o.request_id, o.started_at, o.busy, o.output, o.decodes,
               o.prompt * o.computed AS prefill_tokens,
               -- The prompts of one step share its pass by their tokens.
               o.computed * o.share AS prefills,
               upto.flowing - since.flowing AS flowed,
               ARRAY[upto.at1 - since.at1, upto.at2 - since.at2, upto.at4 - since.at4,
                     upto.at8 - since.at8, upto.at16 - since.at16, upto.at32 - since.at32,
                     upto.at64 - since.at64, upto.at128 - since.at128,
                     upto.at256 - since.at256] AS by_batch,
               o.decode_span, o.step_seconds, o.step_seconds_per_sequence,
               sum(o.decode_to - o.decode_from) OVER request AS span_here,
               sum(upto.flowing - since.flowing) OVER request AS flowed_here,
               sum(upto.shared - since.shared) OVER request AS shared_here
        FROM overlap AS o
        LEFT JOIN curve AS since ON since.interval_id = o.interval_id AND since.t = o.decode_from
        LEFT JOIN curve AS upto ON upto.interval_id = o.interval_id AND upto.t = o.decode_to
        WHERE o.prompt * o.computed + o.output * o.decodes > 0
        WINDOW request AS (PARTITION BY o.request_id)
    ) AS r
) AS r
