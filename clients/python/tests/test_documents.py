"""The client's pure part, without a server: options become the fields
``mongoq enqueue`` writes, and bad input is refused with a reason."""

import datetime
import unittest

from bson.int64 import Int64
from bson.objectid import ObjectId

from mongoq import InvalidJob
from mongoq._documents import Options, check_flow, distinct, id_value, utc

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.timezone.utc)


class Documents(unittest.TestCase):
    def test_a_plain_job_has_every_field_the_claim_index_orders_by(self):
        job = Options().document("id", {"x": 1}, NOW)
        self.assertEqual(job, {"_id": "id", "data": {"x": 1}, "status": "pending", "priority": 0, "run_at": NOW, "attempts": 0})
        self.assertIsInstance(job["priority"], Int64)
        self.assertNotIsInstance(job["attempts"], Int64)

    def test_a_dependent_waits_and_counts_its_distinct_dependencies(self):
        dep = ObjectId()
        job = Options(after=[dep, str(dep), 1, 1.0], if_dep_fails="run").document("id", None, NOW)
        self.assertEqual(job["status"], "waiting")
        self.assertEqual(job["after"], [dep, dep, 1, 1.0])
        self.assertEqual(job["deps_total"], 2)
        self.assertEqual(job["if_dep_fails"], "run")
        self.assertNotIn("if_dep_fails", Options(after=[dep]).document("id", None, NOW))

    def test_ids_read_as_the_cli_reads_them(self):
        oid = ObjectId()
        self.assertEqual(id_value(str(oid)), oid)
        self.assertEqual(id_value("report-1"), "report-1")
        self.assertEqual(id_value(7), 7)
        self.assertEqual(distinct([1, Int64(1), 1.0, "1"]), 2)

    def test_times_are_utc_to_the_millisecond(self):
        berlin = datetime.timezone(datetime.timedelta(hours=1))
        moment = datetime.datetime(2030, 1, 1, 1, 0, 0, 123456, tzinfo=berlin)
        self.assertEqual(utc(moment), datetime.datetime(2030, 1, 1, 0, 0, 0, 123000, tzinfo=datetime.timezone.utc))
        self.assertEqual(utc(datetime.datetime(2030, 1, 1)).tzinfo, datetime.timezone.utc)

    def test_bad_options_are_refused_with_what_to_do(self):
        cases = [
            (dict(priority=1.5), "priority must be an integer"),
            (dict(priority=2**63), "64 bits"),
            (dict(max_attempts=0), "from 1 up"),
            (dict(queue="a\nb"), "control character"),
            (dict(queue="x" * 201), "1 to 200"),
            (dict(unique_key=5), "unique_key must be a string"),
            (dict(after="abc"), "list of job ids"),
            (dict(if_dep_fails="run"), "give after"),
            (dict(after=[1], if_dep_fails="skip"), "'cancel'"),
            (dict(after=[1], unique_key="k"), "cannot have a unique_key"),
            (dict(after=list(range(10_001))), "at most 10000"),
        ]
        for options, words in cases:
            with self.subTest(options=str(options)[:60]):
                with self.assertRaises(InvalidJob) as refused:
                    Options(**options)
                self.assertIn(words, str(refused.exception))


class Flows(unittest.TestCase):
    def refused(self, flow, words):
        with self.assertRaises(InvalidJob) as refused:
            check_flow(flow)
        self.assertIn(words, str(refused.exception))

    def test_a_diamond_is_accepted_and_takes_its_queue(self):
        steps, queue = check_flow({"queue": "r", "jobs": [
            {"name": "a"}, {"name": "b", "after": ["a"]}, {"name": "c", "after": ["a"]},
            {"name": "d", "after": ["b", "c"], "if_dep_fails": "run"},
        ]})
        self.assertEqual([s["name"] for s in steps], ["a", "b", "c", "d"])
        self.assertEqual(queue, "r")
        self.assertEqual(check_flow({"jobs": [{"name": "a"}]}, queue="q")[1], "q")

    def test_a_cycle_is_named(self):
        self.refused({"jobs": [{"name": "a", "after": ["c"]}, {"name": "b", "after": ["a"]}, {"name": "c", "after": ["b"]}]},
                     "a → c → b → a")
        self.refused({"jobs": [{"name": "a", "after": ["a"]}]}, "a → a")

    def test_every_other_mistake_is_named(self):
        self.refused({"jobs": []}, "1 to 10000 jobs")
        self.refused({"jobs": [{"name": " "}]}, "job 1 of the flow has an empty name")
        self.refused({"jobs": [{"name": "a"}, {"name": "a"}]}, "two jobs of the flow are named `a`")
        self.refused({"jobs": [{"name": "a", "after": ["b"]}]}, "waits for `b`, which is not a job")
        self.refused({"jobs": [{"name": "a", "max_attempts": 0}]}, "job `a`: max_attempts")
        self.refused({"jobs": [{"name": "a", "queue": ""}]}, "job `a`: queue")
        self.refused({"jobs": [{"name": "a", "if_dep_fails": "x"}]}, "job `a`: if_dep_fails")
        self.refused({"jobs": [{"name": "a", "priorty": 1}]}, "unknown fields ['priorty']")
        self.refused({"jobz": []}, "unknown fields ['jobz']")
        self.refused([1], "a flow is a dict")


if __name__ == "__main__":
    unittest.main()
