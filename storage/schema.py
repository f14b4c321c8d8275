"""The DuckDB schema as an append-only list of migrations.

Each entry of :data:`MIGRATIONS` is ``(version, description, sql)``. :func:`storage.db.connect` applies the
pending ones in order, each in its own transaction, and records it in ``schema_version``. Never edit or
reorder a migration that has shipped: append a new one (other modules add runs, epochs, evaluations and
predictions tables this way). ``SCHEMA_VERSION`` is always the last entry's version.

Spans are half-open ``[start, "end")`` character offsets (``"end"`` is quoted: it is an SQL keyword).
"""

from __future__ import annotations

_V1_DATASETS = """
CREATE TABLE datasets (
    name          VARCHAR   NOT NULL,
    version       INTEGER   NOT NULL,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    format        VARCHAR   NOT NULL,          -- reader used (or 'mixed' when files differ)
    scheme        VARCHAR,                     -- tag scheme of the input files, NULL for span formats
    policy        VARCHAR   NOT NULL,          -- 'strict' | 'repair'
    untyped_label VARCHAR   NOT NULL,
    labels        VARCHAR[] NOT NULL,          -- entity labels, sorted, fixed at ingest
    n_documents   BIGINT    NOT NULL,
    n_entities    BIGINT    NOT NULL,
    n_characters  BIGINT    NOT NULL,
    n_errors      BIGINT    NOT NULL,          -- records rejected
    n_warnings    BIGINT    NOT NULL,
    fingerprint   VARCHAR   NOT NULL,          -- sha256 over file hashes + options: re-ingest detection
    options       JSON,                        -- split_ratios, seed, tag_column ...
    PRIMARY KEY (name, version)
);

CREATE TABLE dataset_files (
    dataset     VARCHAR NOT NULL,
    version     INTEGER NOT NULL,
    split       VARCHAR,                       -- NULL when the file was split by ratios
    path        VARCHAR NOT NULL,
    format      VARCHAR NOT NULL,
    sha256      VARCHAR NOT NULL,
    size_bytes  BIGINT  NOT NULL,
    n_documents BIGINT  NOT NULL,
    PRIMARY KEY (dataset, version, path)
);

CREATE TABLE dataset_splits (
    dataset      VARCHAR NOT NULL,
    version      INTEGER NOT NULL,
    split        VARCHAR NOT NULL,
    n_documents  BIGINT  NOT NULL,
    n_entities   BIGINT  NOT NULL,
    n_characters BIGINT  NOT NULL,
    PRIMARY KEY (dataset, version, split)
);

CREATE TABLE documents (
    dataset   VARCHAR NOT NULL,
    version   INTEGER NOT NULL,
    split     VARCHAR NOT NULL,
    doc_id    VARCHAR NOT NULL,
    ord       BIGINT  NOT NULL,                -- order within (dataset, version): input order
    text      VARCHAR NOT NULL,
    text_sha1 VARCHAR NOT NULL,
    source    VARCHAR,
    line      BIGINT,
    PRIMARY KEY (dataset, version, doc_id)
);

CREATE TABLE gold_entities (
    dataset VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    doc_id  VARCHAR NOT NULL,
    start   INTEGER NOT NULL,
    "end"   INTEGER NOT NULL,
    label   VARCHAR NOT NULL,
    text    VARCHAR NOT NULL,                  -- the mention, text[start:end]
    CHECK ("end" > start AND start >= 0)
);

CREATE TABLE ingest_problems (
    dataset  VARCHAR NOT NULL,
    version  INTEGER NOT NULL,
    file     VARCHAR NOT NULL,
    line     BIGINT,
    record   BIGINT,
    code     VARCHAR NOT NULL,
    severity VARCHAR NOT NULL CHECK (severity IN ('error', 'warning')),
    message  VARCHAR NOT NULL
);

CREATE VIEW v_gold_entities AS
SELECT e.dataset, e.version, d.split, e.doc_id, e.start, e."end", e.label, e.text AS mention,
       d.text AS document_text, d.source, d.line
FROM gold_entities e
JOIN documents d USING (dataset, version, doc_id);

CREATE VIEW v_label_counts AS
SELECT d.dataset, d.version, d.split, e.label, count(*) AS n_entities,
       count(DISTINCT e.doc_id) AS n_documents
FROM gold_entities e
JOIN documents d USING (dataset, version, doc_id)
GROUP BY ALL;

CREATE VIEW v_latest_datasets AS
SELECT * FROM datasets
QUALIFY version = max(version) OVER (PARTITION BY name);

CREATE VIEW v_problem_counts AS
SELECT dataset, version, file, code, severity, count(*) AS n
FROM ingest_problems
GROUP BY ALL;
"""

_V2_RUNS = """
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY,
    dataset VARCHAR NOT NULL,
    dataset_version INTEGER,
    encoder VARCHAR NOT NULL,
    head VARCHAR NOT NULL,
    scheme VARCHAR NOT NULL,
    config JSON NOT NULL,
    status VARCHAR NOT NULL,            -- running | completed | failed
    run_dir VARCHAR NOT NULL,
    model_dir VARCHAR,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    seconds DOUBLE,
    best_epoch INTEGER,
    best_dev_f1 DOUBLE,
    stopped_reason VARCHAR,
    error VARCHAR,
    is_production BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE epochs (
    run_id VARCHAR NOT NULL,
    epoch INTEGER NOT NULL,
    train_loss DOUBLE,
    dev_f1 DOUBLE,
    dev_precision DOUBLE,
    dev_recall DOUBLE,
    dev_char_accuracy DOUBLE,
    dev_sentence_accuracy DOUBLE,
    learning_rate DOUBLE,
    seconds DOUBLE,
    sentences_per_second DOUBLE,
    chars_per_second DOUBLE,
    is_best BOOLEAN,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE evaluations (
    eval_id VARCHAR PRIMARY KEY,
    run_id VARCHAR,
    model_dir VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    dataset_version INTEGER,
    split VARCHAR,
    created_at TIMESTAMP NOT NULL,
    scheme VARCHAR,
    n_sentences INTEGER,
    n_chars BIGINT,
    char_accuracy DOUBLE,
    sentence_accuracy DOUBLE,
    "precision" DOUBLE,
    recall DOUBLE,
    f1 DOUBLE,
    macro_precision DOUBLE,
    macro_recall DOUBLE,
    macro_f1 DOUBLE,
    report JSON
);
CREATE TABLE evaluation_types (
    eval_id VARCHAR NOT NULL,
    label VARCHAR NOT NULL,
    "precision" DOUBLE,
    recall DOUBLE,
    f1 DOUBLE,
    support INTEGER,
    predicted INTEGER,
    PRIMARY KEY (eval_id, label)
);
CREATE TABLE evaluation_errors (
    eval_id VARCHAR NOT NULL,
    label VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (eval_id, label, kind)
);
CREATE TABLE prediction_runs (
    pred_run_id VARCHAR PRIMARY KEY,
    model_dir VARCHAR NOT NULL,
    run_id VARCHAR,
    input_kind VARCHAR NOT NULL,        -- file | dataset | sql | texts
    input_ref VARCHAR NOT NULL,
    config JSON,
    status VARCHAR NOT NULL,            -- running | completed | failed
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    seconds DOUBLE,
    n_documents INTEGER,
    n_chars BIGINT,
    n_entities INTEGER
);
CREATE TABLE predicted_documents (
    pred_run_id VARCHAR NOT NULL,
    doc_id VARCHAR NOT NULL,
    text VARCHAR NOT NULL,
    n_entities INTEGER NOT NULL,
    PRIMARY KEY (pred_run_id, doc_id)
);
CREATE TABLE predicted_entities (
    pred_run_id VARCHAR NOT NULL,
    doc_id VARCHAR NOT NULL,
    "start" INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    label VARCHAR NOT NULL,
    text VARCHAR NOT NULL,
    confidence DOUBLE
);
CREATE VIEW v_predicted_label_counts AS
    SELECT pred_run_id, label, count(*) AS n_entities, count(DISTINCT text) AS n_distinct
    FROM predicted_entities GROUP BY pred_run_id, label;
CREATE VIEW v_top_predicted_entities AS
    SELECT pred_run_id, label, text, count(*) AS n, count(DISTINCT doc_id) AS n_documents,
           avg(confidence) AS mean_confidence
    FROM predicted_entities GROUP BY pred_run_id, label, text;
CREATE VIEW v_predicted_entities_in_context AS
    SELECT e.pred_run_id, e.doc_id, e."start", e."end", e.label, e.text, e.confidence,
           substr(d.text, greatest(1, e."start" + 1 - 20), least(e."start", 20)) AS left_context,
           substr(d.text, e."end" + 1, 20) AS right_context
    FROM predicted_entities e JOIN predicted_documents d USING (pred_run_id, doc_id);
CREATE VIEW v_run_summary AS
    SELECT r.run_id, r.dataset, r.encoder, r.head, r.scheme, r.status, r.started_at, r.seconds,
           r.best_epoch, r.best_dev_f1, r.is_production, r.model_dir,
           (SELECT count(*) FROM epochs e WHERE e.run_id = r.run_id) AS n_epochs
    FROM runs r;
"""

_V3_PREDICTION_VIEWS = """
CREATE MACRO predicted_disagreements(run_a, run_b) AS TABLE
    WITH shared AS (
        SELECT doc_id FROM predicted_documents WHERE pred_run_id = run_a
        INTERSECT
        SELECT doc_id FROM predicted_documents WHERE pred_run_id = run_b
    ),
    a AS (SELECT e.* FROM predicted_entities e SEMI JOIN shared USING (doc_id) WHERE e.pred_run_id = run_a),
    b AS (SELECT e.* FROM predicted_entities e SEMI JOIN shared USING (doc_id) WHERE e.pred_run_id = run_b),
    only_a AS (SELECT * FROM a ANTI JOIN b USING (doc_id, "start", "end", label)),
    only_b AS (SELECT * FROM b ANTI JOIN a USING (doc_id, "start", "end", label))
    SELECT 'only_a' AS side, x.doc_id, x."start", x."end", x.label, x.text, x.confidence,
           (SELECT string_agg(y.label || '[' || y."start" || ',' || y."end" || ')', ' ' ORDER BY y."start")
            FROM b y WHERE y.doc_id = x.doc_id AND y."start" < x."end" AND x."start" < y."end")
           AS other_run_overlaps
    FROM only_a x
    UNION ALL
    SELECT 'only_b' AS side, x.doc_id, x."start", x."end", x.label, x.text, x.confidence,
           (SELECT string_agg(y.label || '[' || y."start" || ',' || y."end" || ')', ' ' ORDER BY y."start")
            FROM a y WHERE y.doc_id = x.doc_id AND y."start" < x."end" AND x."start" < y."end")
           AS other_run_overlaps
    FROM only_b x;
CREATE MACRO document_entities(run, doc) AS TABLE
    SELECT "start", "end", label, text, confidence, left_context, right_context
    FROM v_predicted_entities_in_context WHERE pred_run_id = run AND doc_id = doc
    ORDER BY "start";
CREATE VIEW v_prediction_runs AS
    SELECT r.pred_run_id, r.status, r.model_dir, r.run_id, r.input_kind, r.input_ref, r.started_at,
           r.finished_at, r.seconds, r.n_documents, r.n_chars, r.n_entities,
           CASE WHEN r.seconds > 0 THEN r.n_chars / r.seconds END AS chars_per_second,
           (SELECT count(*) FROM predicted_documents d WHERE d.pred_run_id = r.pred_run_id)
           AS n_documents_stored,
           (SELECT count(*) FROM predicted_entities e WHERE e.pred_run_id = r.pred_run_id)
           AS n_entities_stored
    FROM prediction_runs r;
CREATE VIEW v_low_confidence_entities AS
    SELECT pred_run_id, doc_id, "start", "end", label, text, confidence, left_context, right_context
    FROM v_predicted_entities_in_context
    WHERE confidence < 0.5;
"""

_V4_REVIEWS = """
CREATE TABLE review_events (                  -- append-only: a row is never updated or deleted
    event_id     VARCHAR PRIMARY KEY,         -- made by the client (uuid): the spool's idempotency key
    pred_run_id  VARCHAR   NOT NULL,
    doc_id       VARCHAR   NOT NULL,
    doc_hash     VARCHAR   NOT NULL,          -- sha256 of the text the reviewer saw
    reviewer     VARCHAR   NOT NULL CHECK (length(trim(reviewer)) > 0),
    action       VARCHAR   NOT NULL CHECK (action IN ('accept', 'reject', 'relabel', 'adjust', 'add',
                                                      'add_label', 'done', 'skip', 'undo')),
    "start"      INTEGER,                     -- the entity acted on (its key): the predicted span, or the
    "end"        INTEGER,                     -- added span for add; NULL for add_label, done, skip, undo
    label        VARCHAR,                     -- the entity's label; the new label's name for add_label
    new_start    INTEGER,                     -- adjust: the new boundaries
    new_end      INTEGER,
    new_label    VARCHAR,                     -- relabel (and optionally adjust): the new label
    ref_event_id VARCHAR,                     -- undo: the event it cancels
    created_at   TIMESTAMP NOT NULL,          -- when the reviewer decided (kept from the spool)
    recorded_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE review_exports (                 -- which review events made which dataset version
    dataset  VARCHAR NOT NULL,
    version  INTEGER NOT NULL,
    event_id VARCHAR NOT NULL,
    PRIMARY KEY (dataset, version, event_id)
);

CREATE TABLE model_promotions (               -- production-model history (rollback returns to previous)
    promoted_at     TIMESTAMP NOT NULL,
    run_id          VARCHAR   NOT NULL,
    previous_run_id VARCHAR,
    reason          VARCHAR,
    comparison      JSON
);

ALTER TABLE predicted_documents ADD COLUMN uncertainty DOUBLE;  -- summed CRF token entropy; NULL: older rows

-- events still in force: an undo cancels the event it names (and is not itself a decision)
CREATE VIEW v_review_effective AS
    SELECT e.* FROM review_events e
    WHERE e.action <> 'undo'
      AND NOT EXISTS (SELECT 1 FROM review_events u
                      WHERE u.action = 'undo' AND u.ref_event_id = e.event_id
                        AND u.pred_run_id = e.pred_run_id AND u.doc_id = e.doc_id);

-- the latest decision (by created_at, then recorded_at, then event_id) per entity key, over all reviewers
CREATE VIEW v_review_latest AS
    SELECT * FROM v_review_effective
    WHERE action IN ('accept', 'reject', 'relabel', 'adjust', 'add')
    QUALIFY row_number() OVER (PARTITION BY pred_run_id, doc_id, "start", "end", label
                               ORDER BY created_at DESC, recorded_at DESC, event_id DESC) = 1;

-- a document is reviewed once a done event (not undone) exists for it
CREATE VIEW v_reviewed_documents AS
    SELECT pred_run_id, doc_id, max(created_at) AS reviewed_at,
           string_agg(DISTINCT reviewer, ', ' ORDER BY reviewer) AS reviewers
    FROM v_review_effective WHERE action = 'done'
    GROUP BY pred_run_id, doc_id;

-- per (pred_run_id, doc_id): the predicted entities after the latest decision on each (later wins), plus
-- the added ones, minus the rejected ones. key_* name the entity as events do (its predicted or added span)
CREATE VIEW v_review_current AS
    WITH keys AS (
        SELECT pred_run_id, doc_id, "start", "end", label, confidence, false AS added
        FROM predicted_entities
        UNION ALL
        SELECT l.pred_run_id, l.doc_id, l."start", l."end", l.label, NULL AS confidence, true AS added
        FROM v_review_latest l
        WHERE NOT EXISTS (SELECT 1 FROM predicted_entities p
                          WHERE p.pred_run_id = l.pred_run_id AND p.doc_id = l.doc_id
                            AND p."start" = l."start" AND p."end" = l."end" AND p.label = l.label)
    ),
    cur AS (
        SELECT k.pred_run_id, k.doc_id, k."start" AS key_start, k."end" AS key_end, k.label AS key_label,
               CASE WHEN l.action = 'adjust' THEN l.new_start ELSE k."start" END AS "start",
               CASE WHEN l.action = 'adjust' THEN l.new_end ELSE k."end" END AS "end",
               CASE WHEN l.action IN ('relabel', 'adjust') THEN coalesce(l.new_label, k.label)
                    ELSE k.label END AS label,
               k.confidence,
               CASE WHEN k.added THEN 'added'
                    WHEN l.action IS NULL THEN 'predicted'
                    WHEN l.action IN ('accept', 'add') THEN 'accepted'
                    ELSE 'corrected' END AS state,
               l.action AS last_action, l.reviewer, l.created_at AS decided_at, l.event_id
        FROM keys k
        LEFT JOIN v_review_latest l USING (pred_run_id, doc_id, "start", "end", label)
        WHERE l.action IS NULL OR l.action <> 'reject'
    )
    SELECT c.pred_run_id, c.doc_id, c."start", c."end", c.label,
           substr(d.text, c."start" + 1, c."end" - c."start") AS text, c.confidence, c.state,
           c.key_start, c.key_end, c.key_label, c.last_action, c.reviewer, c.decided_at, c.event_id,
           r.doc_id IS NOT NULL AS reviewed
    FROM cur c
    JOIN predicted_documents d USING (pred_run_id, doc_id)
    LEFT JOIN v_reviewed_documents r USING (pred_run_id, doc_id);

-- entities on which two reviewers' latest decisions differ (one row per reviewer; the outcome is what the
-- decision makes of the entity: 'reject' or 'LABEL[start,end)')
CREATE VIEW v_review_disagreements AS
    WITH per_reviewer AS (
        SELECT pred_run_id, doc_id, "start", "end", label, reviewer, action, new_start, new_end, new_label,
               created_at, event_id,
               CASE WHEN action = 'reject' THEN 'reject'
                    WHEN action = 'adjust' THEN coalesce(new_label, label) || '[' || new_start || ','
                                                || new_end || ')'
                    WHEN action = 'relabel' THEN new_label || '[' || "start" || ',' || "end" || ')'
                    ELSE label || '[' || "start" || ',' || "end" || ')' END AS outcome
        FROM v_review_effective
        WHERE action IN ('accept', 'reject', 'relabel', 'adjust', 'add')
        QUALIFY row_number() OVER (PARTITION BY pred_run_id, doc_id, "start", "end", label, reviewer
                                   ORDER BY created_at DESC, recorded_at DESC, event_id DESC) = 1
    )
    SELECT * FROM per_reviewer
    QUALIFY count(DISTINCT outcome) OVER (PARTITION BY pred_run_id, doc_id, "start", "end", label) > 1;
-- One row per (run, dataset version it trained on, review event behind that version): the base dataset
-- (runs.dataset / dataset_version) and the ``--plus`` one (runs.config's "plus"): "which dataset versions
-- and review events made this model".
CREATE VIEW v_model_lineage AS
WITH trained_on AS (
    SELECT run_id, 'base' AS role, dataset, dataset_version AS version FROM runs
    UNION ALL
    SELECT run_id, 'plus' AS role, json_extract_string(config, '$.plus.dataset') AS dataset,
           CAST(json_extract(config, '$.plus.version') AS INTEGER) AS version
    FROM runs WHERE json_extract(config, '$.plus.dataset') IS NOT NULL
)
SELECT t.run_id, t.role, t.dataset, t.version, d.format = 'review' AS is_review_export,
       e.event_id, e.pred_run_id, e.doc_id, e.reviewer, e.action, e.created_at
FROM trained_on t
LEFT JOIN datasets d ON d.name = t.dataset AND d.version = t.version
LEFT JOIN review_exports x ON x.dataset = t.dataset AND x.version = t.version
LEFT JOIN review_events e ON e.event_id = x.event_id;
"""

_V5_DROPPED_SPANS = """
CREATE TABLE dropped_spans (
    dataset    VARCHAR NOT NULL,
    version    INTEGER NOT NULL,
    doc_id     VARCHAR NOT NULL,
    start      INTEGER NOT NULL,
    "end"      INTEGER NOT NULL,
    label      VARCHAR NOT NULL,
    reason     VARCHAR NOT NULL CHECK (reason IN ('nested', 'crossing', 'same_span')),
    kept_start INTEGER NOT NULL,                -- the overlapping entity that was kept instead
    kept_end   INTEGER NOT NULL,
    kept_label VARCHAR NOT NULL,
    CHECK ("end" > start AND start >= 0)
);
"""

# Review events get their arrival order (``seq``: ner_core.review's order breaks a tie of created_at with
# it), and a run's ``--plus`` dataset version becomes two typed columns instead of a key slipped into its
# config JSON. Rows stored before keep their answers: events get seq <= 0 in the order the previous views
# broke ties (recorded_at, then event_id); a run's plus moves from its config to the columns.
# review_events is made again rather than altered: DuckDB 2.0 cannot replay a write-ahead log holding an
# ALTER TABLE of a table with this CHECK (it wants to download core_functions), so a crash before the
# next checkpoint would leave a file that does not open offline.
_V6_REVIEW_ORDER_AND_RUN_PLUS = """
CREATE SEQUENCE review_event_seq START 1;
CREATE TEMP TABLE _review_events_v5 AS
    SELECT *, row_number() OVER (ORDER BY recorded_at, created_at, event_id) - count(*) OVER () AS seq
    FROM review_events;
DROP TABLE review_events;
CREATE TABLE review_events (                  -- append-only: a row is never updated or deleted
    event_id     VARCHAR PRIMARY KEY,         -- made by the client (uuid): the spool's idempotency key
    pred_run_id  VARCHAR   NOT NULL,
    doc_id       VARCHAR   NOT NULL,
    doc_hash     VARCHAR   NOT NULL,          -- sha256 of the text the reviewer saw
    reviewer     VARCHAR   NOT NULL CHECK (length(trim(reviewer)) > 0),
    action       VARCHAR   NOT NULL CHECK (action IN ('accept', 'reject', 'relabel', 'adjust', 'add',
                                                      'add_label', 'done', 'skip', 'undo')),
    "start"      INTEGER,                     -- the entity acted on (its key): the predicted span, or the
    "end"        INTEGER,                     -- added span for add; NULL for add_label, done, skip, undo
    label        VARCHAR,                     -- the entity's label; the new label's name for add_label
    new_start    INTEGER,                     -- adjust: the new boundaries
    new_end      INTEGER,
    new_label    VARCHAR,                     -- relabel (and optionally adjust): the new label
    ref_event_id VARCHAR,                     -- undo: the event it cancels
    created_at   TIMESTAMP NOT NULL,          -- when the reviewer decided (kept from the spool)
    recorded_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    seq          BIGINT    NOT NULL DEFAULT nextval('review_event_seq')  -- arrival order (batch order)
);
INSERT INTO review_events SELECT * FROM _review_events_v5;
DROP TABLE _review_events_v5;

ALTER TABLE runs ADD COLUMN plus_dataset VARCHAR;   -- ner train --plus: the second dataset's name
ALTER TABLE runs ADD COLUMN plus_version INTEGER;   -- ... and the version trained on
UPDATE runs SET plus_dataset = json_extract_string(config, '$.plus.dataset'),
                plus_version = CAST(json_extract(config, '$.plus.version') AS INTEGER),
                config = json_merge_patch(config, '{"plus": null}')
WHERE json_exists(config, '$.plus');

-- the views over review_events, bound to the new table
CREATE OR REPLACE VIEW v_review_effective AS
    SELECT e.* FROM review_events e
    WHERE e.action <> 'undo'
      AND NOT EXISTS (SELECT 1 FROM review_events u
                      WHERE u.action = 'undo' AND u.ref_event_id = e.event_id
                        AND u.pred_run_id = e.pred_run_id AND u.doc_id = e.doc_id);

-- the latest decision per entity key, over all reviewers, in ner_core.review's order: created_at, then the
-- order the events arrived in (seq)
CREATE OR REPLACE VIEW v_review_latest AS
    SELECT * FROM v_review_effective
    WHERE action IN ('accept', 'reject', 'relabel', 'adjust', 'add')
    QUALIFY row_number() OVER (PARTITION BY pred_run_id, doc_id, "start", "end", label
                               ORDER BY created_at DESC, seq DESC, event_id DESC) = 1;

CREATE OR REPLACE VIEW v_review_disagreements AS
    WITH per_reviewer AS (
        SELECT pred_run_id, doc_id, "start", "end", label, reviewer, action, new_start, new_end, new_label,
               created_at, event_id,
               CASE WHEN action = 'reject' THEN 'reject'
                    WHEN action = 'adjust' THEN coalesce(new_label, label) || '[' || new_start || ','
                                                || new_end || ')'
                    WHEN action = 'relabel' THEN new_label || '[' || "start" || ',' || "end" || ')'
                    ELSE label || '[' || "start" || ',' || "end" || ')' END AS outcome
        FROM v_review_effective
        WHERE action IN ('accept', 'reject', 'relabel', 'adjust', 'add')
        QUALIFY row_number() OVER (PARTITION BY pred_run_id, doc_id, "start", "end", label, reviewer
                                   ORDER BY created_at DESC, seq DESC, event_id DESC) = 1
    )
    SELECT * FROM per_reviewer
    QUALIFY count(DISTINCT outcome) OVER (PARTITION BY pred_run_id, doc_id, "start", "end", label) > 1;

-- One row per (run, dataset version it trained on, review event behind that version): the base dataset
-- (runs.dataset / dataset_version) and the --plus one (runs.plus_dataset / plus_version)
CREATE OR REPLACE VIEW v_model_lineage AS
WITH trained_on AS (
    SELECT run_id, 'base' AS role, dataset, dataset_version AS version FROM runs
    UNION ALL
    SELECT run_id, 'plus' AS role, plus_dataset AS dataset, plus_version AS version
    FROM runs WHERE plus_dataset IS NOT NULL
)
SELECT t.run_id, t.role, t.dataset, t.version, d.format = 'review' AS is_review_export,
       e.event_id, e.pred_run_id, e.doc_id, e.reviewer, e.action, e.created_at
FROM trained_on t
LEFT JOIN datasets d ON d.name = t.dataset AND d.version = t.version
LEFT JOIN review_exports x ON x.dataset = t.dataset AND x.version = t.version
LEFT JOIN review_events e ON e.event_id = x.event_id;
"""

# Calibrated entity confidence (issue 27): predicted entities get a calibrated confidence beside the raw one
# (NULL for rows stored before, or by a model directory without a temperature); the views that list entity
# confidence show both, and v_low_confidence_entities ranks by the calibrated one where it exists and says
# which it used. An evaluation stores its calibration (temperature, ECE before and after, the reliability
# table of each, precision/recall at confidence thresholds) and its (gold label, predicted label) pairs, so
# the dashboard can draw a reliability diagram and a confusion matrix. document_entities() orders entities
# that share a start (a span run's nested entities) by end and label too. A predicted entity also says
# whether a user dictionary forced it (from_dictionary: NULL for rows stored before, false otherwise); the
# entity views list it last.
# The ALTERs touch tables without a CHECK (see _V6's note on DuckDB's write-ahead log).
_V7_CALIBRATION = """
ALTER TABLE predicted_entities ADD COLUMN confidence_calibrated DOUBLE;
ALTER TABLE predicted_entities ADD COLUMN from_dictionary BOOLEAN;    -- forced by a user dictionary
ALTER TABLE evaluations ADD COLUMN temperature DOUBLE;            -- the one applied; 1.0: not calibrated
ALTER TABLE evaluations ADD COLUMN ece_raw DOUBLE;                -- expected calibration error, 10 bins
ALTER TABLE evaluations ADD COLUMN ece_calibrated DOUBLE;
ALTER TABLE evaluations ADD COLUMN calibration_precision VARCHAR; -- fp32, bf16, ...: what it ran in

CREATE TABLE evaluation_reliability (         -- 10 equal-width confidence bins per kind; empty ones too
    eval_id         VARCHAR NOT NULL,
    kind            VARCHAR NOT NULL,         -- 'raw' | 'calibrated'
    bin             INTEGER NOT NULL,         -- 0..9: confidences in [lo, hi) (the last bin includes 1.0)
    lo              DOUBLE  NOT NULL,
    hi              DOUBLE  NOT NULL,
    n               BIGINT  NOT NULL,         -- predicted entities in the bin
    mean_confidence DOUBLE  NOT NULL,
    accuracy        DOUBLE  NOT NULL,         -- share of them that are exactly a gold entity
    PRIMARY KEY (eval_id, kind, bin)
);
CREATE TABLE evaluation_thresholds (          -- entities kept at calibrated confidence >= threshold
    eval_id     VARCHAR NOT NULL,
    threshold   DOUBLE  NOT NULL,
    "precision" DOUBLE  NOT NULL,
    recall      DOUBLE  NOT NULL,
    f1          DOUBLE  NOT NULL,
    n_kept      BIGINT  NOT NULL,
    PRIMARY KEY (eval_id, threshold)
);
CREATE TABLE evaluation_confusion (           -- entities paired by identical span; 'O': no entity there
    eval_id    VARCHAR NOT NULL,
    gold_label VARCHAR NOT NULL,
    pred_label VARCHAR NOT NULL,
    n          BIGINT  NOT NULL,
    PRIMARY KEY (eval_id, gold_label, pred_label)
);

CREATE OR REPLACE VIEW v_predicted_entities_in_context AS
    SELECT e.pred_run_id, e.doc_id, e."start", e."end", e.label, e.text, e.confidence,
           substr(d.text, greatest(1, e."start" + 1 - 20), least(e."start", 20)) AS left_context,
           substr(d.text, e."end" + 1, 20) AS right_context, e.confidence_calibrated, e.from_dictionary
    FROM predicted_entities e JOIN predicted_documents d USING (pred_run_id, doc_id);
CREATE OR REPLACE VIEW v_top_predicted_entities AS
    SELECT pred_run_id, label, text, count(*) AS n, count(DISTINCT doc_id) AS n_documents,
           avg(confidence) AS mean_confidence, avg(confidence_calibrated) AS mean_confidence_calibrated
    FROM predicted_entities GROUP BY pred_run_id, label, text;
CREATE OR REPLACE MACRO document_entities(run, doc) AS TABLE
    SELECT "start", "end", label, text, confidence, left_context, right_context, confidence_calibrated,
           from_dictionary
    FROM v_predicted_entities_in_context WHERE pred_run_id = run AND doc_id = doc
    ORDER BY "start", "end", label;
-- below 0.5 by the calibrated confidence where the entity has one (confidence_source says which), lowest
-- first
CREATE OR REPLACE VIEW v_low_confidence_entities AS
    SELECT pred_run_id, doc_id, "start", "end", label, text, confidence, left_context, right_context,
           confidence_calibrated,
           CASE WHEN confidence_calibrated IS NULL THEN 'raw' ELSE 'calibrated' END AS confidence_source,
           from_dictionary
    FROM v_predicted_entities_in_context
    WHERE coalesce(confidence_calibrated, confidence) < 0.5
    ORDER BY coalesce(confidence_calibrated, confidence), pred_run_id, doc_id, "start", "end", label;
CREATE OR REPLACE MACRO predicted_disagreements(run_a, run_b) AS TABLE
    WITH shared AS (
        SELECT doc_id FROM predicted_documents WHERE pred_run_id = run_a
        INTERSECT
        SELECT doc_id FROM predicted_documents WHERE pred_run_id = run_b
    ),
    a AS (SELECT e.* FROM predicted_entities e SEMI JOIN shared USING (doc_id) WHERE e.pred_run_id = run_a),
    b AS (SELECT e.* FROM predicted_entities e SEMI JOIN shared USING (doc_id) WHERE e.pred_run_id = run_b),
    only_a AS (SELECT * FROM a ANTI JOIN b USING (doc_id, "start", "end", label)),
    only_b AS (SELECT * FROM b ANTI JOIN a USING (doc_id, "start", "end", label))
    SELECT 'only_a' AS side, x.doc_id, x."start", x."end", x.label, x.text, x.confidence,
           (SELECT string_agg(y.label || '[' || y."start" || ',' || y."end" || ')', ' ' ORDER BY y."start")
            FROM b y WHERE y.doc_id = x.doc_id AND y."start" < x."end" AND x."start" < y."end")
           AS other_run_overlaps, x.confidence_calibrated, x.from_dictionary
    FROM only_a x
    UNION ALL
    SELECT 'only_b' AS side, x.doc_id, x."start", x."end", x.label, x.text, x.confidence,
           (SELECT string_agg(y.label || '[' || y."start" || ',' || y."end" || ')', ' ' ORDER BY y."start")
            FROM a y WHERE y.doc_id = x.doc_id AND y."start" < x."end" AND x."start" < y."end")
           AS other_run_overlaps, x.confidence_calibrated, x.from_dictionary
    FROM only_b x;
"""

# Training sources beyond datasets (issue 26): what a run's model came from besides the dataset versions of
# v_model_lineage: the corpus its encoder was adapted on (``ner adapt``, ``--adapt_seconds``), the unlabeled
# texts it self-trained or distilled on, each self-training round's silver data, the teacher it was
# distilled from. Read from the model directory (metrics.json) and its encoder folder's adapt record when
# the run is recorded as completed (storage.run_sources). run_source_records says which runs were read
# (a run recorded before this migration has no row there: its sources are "not recorded", which is not
# "none") and holds the one line refusing a metrics.json that could not be read. No CHECK on kind: see
# _V6's note on ALTERs of tables with a CHECK.
_V8_RUN_SOURCES = """
CREATE TABLE run_sources (
    run_id         VARCHAR NOT NULL,
    ord            INTEGER NOT NULL,          -- order within the run
    kind           VARCHAR NOT NULL,          -- 'adapt_corpus' | 'unlabeled' | 'silver_round' | 'teacher'
    name           VARCHAR,                   -- the files or dataset version, the silver file, the teacher
    fingerprint    VARCHAR,                   -- sha256 of the corpus's texts, the silver file, the weights
    n_docs         BIGINT,                    -- texts in the corpus; silver documents of the round
    source_dataset VARCHAR,                   -- the stored dataset the texts came from (NULL: files)
    source_version INTEGER,
    detail         JSON,                      -- the rest of the record: settings, counts per reason, ...
    PRIMARY KEY (run_id, ord)
);
CREATE TABLE run_source_records (             -- the runs whose sources were read when they completed
    run_id      VARCHAR PRIMARY KEY,
    recorded_at TIMESTAMP NOT NULL,
    problem     VARCHAR                       -- the line refusing the model's record (NULL: read)
);
-- one row per (run, source); a run without one has a row with kind NULL, and recorded says whether its
-- sources were read at all
CREATE VIEW v_model_sources AS
SELECT r.run_id, r.status, r.model_dir, c.run_id IS NOT NULL AS recorded, c.problem, s.ord, s.kind, s.name,
       s.fingerprint, s.n_docs, s.source_dataset, s.source_version, s.detail
FROM runs r
LEFT JOIN run_source_records c USING (run_id)
LEFT JOIN run_sources s USING (run_id);
"""

# (version, description, SQL). APPEND ONLY.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "datasets, dataset_files, dataset_splits, documents, gold_entities, ingest_problems + views",
        _V1_DATASETS,
    ),
    (
        2,
        "runs, epochs, evaluations (+ per type, error counts), prediction runs, predicted documents and "
        "entities + views",
        _V2_RUNS,
    ),
    (
        3,
        "prediction views: predicted_disagreements(a, b) and document_entities(run, doc) table macros, "
        "v_prediction_runs, v_low_confidence_entities",
        _V3_PREDICTION_VIEWS,
    ),
    (
        4,
        "review events, review exports, promotions, document uncertainty + review views "
        "(v_review_current, v_review_disagreements, v_reviewed_documents, v_model_lineage)",
        _V4_REVIEWS,
    ),
    (
        5,
        "dropped_spans: entities of span-format records dropped by the repair of overlaps (nested, "
        "crossing, same span)",
        _V5_DROPPED_SPANS,
    ),
    (
        6,
        "review events' arrival order (seq) and the views that break ties with it; runs.plus_dataset, "
        "plus_version (from the config JSON of runs stored before) and v_model_lineage over them",
        _V6_REVIEW_ORDER_AND_RUN_PLUS,
    ),
    (
        7,
        "calibrated entity confidence: predicted_entities.confidence_calibrated (in the entity views; "
        "v_low_confidence_entities ranks by it), evaluations' temperature and ECE, evaluation_reliability, "
        "evaluation_thresholds, evaluation_confusion; document_entities() by start, end, label; "
        "predicted_entities.from_dictionary (last in the entity views)",
        _V7_CALIBRATION,
    ),
    (
        8,
        "training sources beyond datasets: run_sources (adapt corpus, unlabeled texts, silver rounds, "
        "teacher), run_source_records (which runs were read) + v_model_sources",
        _V8_RUN_SOURCES,
    ),
]

SCHEMA_VERSION: int = MIGRATIONS[-1][0]


def check_migrations(migrations: list[tuple[int, str, str]] | None = None) -> None:
    """Raise ``ValueError`` unless versions are 1, 2, 3, ... in order with non-empty SQL."""
    migrations = MIGRATIONS if migrations is None else migrations
    for i, entry in enumerate(migrations, start=1):
        if not (isinstance(entry, tuple) and len(entry) == 3):
            raise ValueError(f"migration #{i}: expected (version, description, sql), got {entry!r}")
        version, _desc, sql = entry
        if version != i:
            raise ValueError(
                f"migration #{i}: expected version {i} (append-only, consecutive), got {version}"
            )
        if not sql.strip():
            raise ValueError(f"migration {version}: SQL is empty")
