"""A writer process for the concurrency tests: appends records through ``GenerationLog``.

Usage: python -m tests.log_writer LOG_DIR WRITER_ID COUNT  (COUNT 0 = until killed)
Every 10th record carries a completion of 100-300 KB. Each completion is a repeated marker that
names its writer and sequence number, so any interleaving of two records is detectable.
"""

from __future__ import annotations

import sys

from calibrated_qa.records import GenerationLog, make_record
from calibrated_qa.reward import score_completion


def completion(writer: int, seq: int) -> str:
    marker = f"<w{writer}s{seq}>"
    size = 100_000 + (seq * 7919) % 200_000 if seq % 10 == 0 else 50 + seq % 500
    body = marker * (size // len(marker) + 1)
    return body[:size] + f"\nANSWER: YES with {seq % 101}% probability"


def main(log_dir: str, writer: int, count: int) -> None:
    log = GenerationLog(log_dir)
    seq = 0
    while count == 0 or seq < count:
        text = completion(writer, seq)
        score = score_completion(text, seq % 2 == 0, max_tokens=512)
        record = make_record(
            score=score,
            example_id=writer * 1_000_000 + seq,
            split="train",
            question=f"writer {writer} record {seq}",
            label=seq % 2 == 0,
            completion=text,
            completion_tokens=None,
            truncated=False,
            max_tokens=512,
        )
        if not log.append(record):
            sys.exit(f"writer {writer}: append failed at record {seq}")
        seq += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
