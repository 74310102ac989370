"""A user's typed script: tests/test_streams.py runs mypy --strict on it
(and on variants with one mistake each), never executes it."""

from __future__ import annotations

from collections.abc import Iterator

from bossworker import BossWorkerAsync


def area(job: dict[str, int]) -> int:
    return job["w"] * job["h"]


def shout(result: object) -> str:
    return str(result).upper()


def main() -> None:
    with BossWorkerAsync(area, worker_count=2, start_method="spawn") as bw:
        ids: list[int] = bw.add_work({"w": 2, "h": 3}, {"w": 4, "h": 5})
        first = bw.get_result()  # int, or a failed job's {"ERROR": ...}
        if isinstance(first, dict):
            message: str | None = first.get("ERROR")
            print(message)
        else:
            total: int = first + 1
            print(total, ids)
        maybe = bw.get_result(blocking=False)  # None when nothing is ready
        print(maybe)
        job_id, value = bw.get_result(with_id=True)
        print(job_id, value)
        stream: Iterator[int | dict[str, str]] = bw.map([{"w": 1, "h": 1}], ordered=False)
        print(list(stream))
    with BossWorkerAsync(area, result_handler=shout) as shouting:
        shouting.add_work({"w": 1, "h": 2})
        text = shouting.get_result()
        print(text.lower() if isinstance(text, str) else text)


if __name__ == "__main__":
    main()
