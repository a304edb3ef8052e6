"""Failover: a primary with a synchronous streaming standby, kafka_send()
load, the primary stopped at once mid-drain, the standby promoted.  The
standby's worker sends nothing while it is a standby; once promoted it
finds in Kafka what the old primary sent but never recorded, and delivers
the rest: nothing lost, nothing twice, every key in order."""

import threading

import psycopg2
import pytest

from harness import PgCluster, wait_until
from test_faults import in_flight, reconcile_report, reconciled_count
from workload import OwnKeysWorkload, account, assert_clean


def kafka_workers(pg):
    return pg.scalar("SELECT count(*) FROM pg_stat_activity "
                     "WHERE backend_type = 'kafka_producer'")


def test_failover_to_synchronous_standby(kafka, slow_brokers):
    primary = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'",
                         "kafka.status_retention": "'1d'", "kafka.batch_size": "16384"})
    standby = None
    try:
        primary.query("CREATE EXTENSION kafka_producer")
        standby = PgCluster.standby_of(primary)
        # every commit the primary acknowledges is on the standby
        primary.query("ALTER SYSTEM SET synchronous_standby_names = '*'")
        primary.query("SELECT pg_reload_conf()")
        wait_until(lambda: primary.scalar("SELECT sync_state FROM pg_stat_replication") == "sync",
                   60, what="the standby to replicate synchronously")
        workload = OwnKeysWorkload(primary, "failover", seed=21)
        runner = threading.Thread(target=workload.run,
                                  kwargs=dict(sessions=4, transactions=400, max_size=15,
                                              rollback_rate=0.1))
        runner.start()
        wait_until(lambda: primary.scalar("SELECT count(*) > 2000 FROM kafka.delivered "
                                          "WHERE topic = 'failover'"),
                   120, interval=0.02, what="the drain to be under way")
        sent = in_flight(primary)
        primary.stop("immediate")
        runner.join()
        assert sent > 0, "nothing was in flight at the stop"
        assert kafka_workers(standby) == 0, "a standby's worker ran"
        # a standby says so, and refuses to re-queue in one clear line
        assert standby.scalar("SELECT kafka_stats()->'kafka_producer'->'standby'") is True
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction,
                           match="cannot retry Kafka messages on a standby"):
            standby.query("SELECT kafka_retry_failed()")

        standby.pg_ctl("promote")
        standby.wait_for_worker()
        standby.wait_until_final("failover", timeout=300)
        counts = account(standby, kafka.bootstrap, workload, "failover to a synchronous standby")
        reconciled = reconciled_count(standby)
        print(f"in flight at the stop: {sent}, found in Kafka after the promotion: {reconciled}")
        print(reconcile_report(standby))
        assert counts["committed"] > 1000
        assert_clean(counts)
    finally:
        primary.destroy()
        if standby is not None:
            standby.destroy()
