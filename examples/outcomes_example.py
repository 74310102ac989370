"""Outcomes: typed results with real exceptions, details, cancel and retry."""

import os
import signal
import tempfile

from bossworker import BossWorkerAsync, WorkerDiedError


def work(job):
    if job == "boom":
        raise KeyError(job)  # arrives as a KeyError, not as text
    if job == "crash":
        os.kill(os.getpid(), signal.SIGKILL)  # a worker dying under its job
    if job.startswith("crash-once:"):  # dies on its first attempt only
        marker = job.split(":", 1)[1]
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return "survived"
    return None if job == "nothing" else job.upper()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp, BossWorkerAsync(work, worker_count=2) as bw:
        marker = os.path.join(tmp, "crashed")
        bw.add_work("ok", "nothing", "boom", "crash")
        bw.add_work(f"crash-once:{marker}", retries=1)  # run again if its worker dies
        for o in sorted(bw.outcomes(), key=lambda o: o.job_id):
            if o.ok:  # the handler's value, untouched: None stays None
                print(o.job_id, "ok", repr(o.value), f"attempts={len(o.attempts)}")
            elif isinstance(o.error, WorkerDiedError):
                print(o.job_id, "worker died:", o.error.reason)  # SIGKILL
            else:
                print(o.job_id, "raised", type(o.error).__name__, o.error)  # KeyError 'boom'
            assert o.worker_pid and o.queued_at <= o.started_at <= o.finished_at
        try:
            bw.add_work("boom")
            bw.get_outcome().unwrap()  # the value, or raise the job's exception
        except KeyError as e:
            print("unwrap raised KeyError", e)
