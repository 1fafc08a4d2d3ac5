"""Deploy checks against a running cluster: the fixtures of
tests/integration/conftest.py (redis, PostgreSQL, broker + 2 classifiers +
2 gateways, standalone --role=all instances, the per-test process guard)
are loaded from that file, not copied, so both suites start chatd the same
way. CHATD_BIN may point at a wrapper that runs the image's chatd
(scripts/image.sh does that for the image smoke test).
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
IT = os.path.join(HERE, "..", "integration")
sys.path.insert(0, IT)

_spec = importlib.util.spec_from_file_location("chatd_integration_conftest",
                                               os.path.join(IT, "conftest.py"))
_it = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_it)

# Re-exported names are what pytest registers as fixtures and hooks here.
workdir = _it.workdir
redis_server = _it.redis_server
pg = _it.pg
kafka = _it.kafka        # None unless CHATD_TEST_KAFKA=real (kafkamode.py)
cluster = _it.cluster
start_all_instance = _it.start_all_instance
_process_guard = _it._process_guard
pytest_runtest_makereport = _it.pytest_runtest_makereport
