# PostgreSQL for several Ponder processes (PONDER_DB=postgresql://…): `make test-pg` runs the
# store suite on both back ends and the multi-process tests against a real, throw-away server
# (`tests/pg.py`: the machine's initdb/pg_ctl/postgres, run as the `ponderpg` user when root;
# its data in a temporary folder, 127.0.0.1 on a free port). Included by the main Makefile;
# kept out of `make test` (it needs the PostgreSQL binaries: `apt-get install -y postgresql`,
# or PONDER_PG_BIN=/path/to/bin). A test that cannot get PostgreSQL fails here, it does not skip.
# `make bench-scale-store`: 500 chains, one process on SQLite versus two on PostgreSQL.

PG_PYTEST_ARGS ?=

.PHONY: test-pg bench-scale-store

test-pg: $(STAMP)
	PONDER_REQUIRE_PG=1 $(VENV)/bin/pytest -q -m pg -n 2 $(PG_PYTEST_ARGS) \
	  tests/test_store_backends.py tests/test_multiprocess.py

bench-scale-store: $(STAMP)
	$(PY) -m bench.scale store
