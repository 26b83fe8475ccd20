"""A generated 3GPP-like Markdown corpus with release-to-release near-duplicates.

All text is produced here from a small invented vocabulary (no specification text). Each spec
exists in several releases; a later release keeps most clauses, edits a few words in some,
rewrites others and adds new ones, as real releases do. Documents carry cover lines, a table
of contents and page headers/footers for the normalizer to strip.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

NOUNS = ["UE", "gNB", "AMF", "SMF", "UPF", "PDU session", "QoS flow", "DRB", "SRB", "RRC connection",
         "bearer", "cell", "carrier", "measurement report", "timer T310", "paging message", "PDCP entity",
         "RLC entity", "MAC entity", "SDAP header", "security context", "handover command", "beam",
         "bandwidth part", "network slice", "registration area", "tracking area", "NAS message",
         "configuration", "capability", "counter", "resource pool", "sidelink", "logical channel"]
VERBS = ["shall initiate", "shall release", "may configure", "shall indicate", "shall discard",
         "shall forward", "may suspend", "shall resume", "shall start", "shall stop", "shall apply",
         "may request", "shall store", "shall deliver", "shall reset", "shall consider"]
CONDS = ["upon reception of the message", "if the timer expires", "when the procedure is complete",
         "unless otherwise specified", "as specified in clause 5.3", "if configured by upper layers",
         "when the radio link failure is detected", "after successful completion of the procedure",
         "if the integrity check fails", "for each configured cell group", "before any further action"]
ADJ = ["initial", "subsequent", "dedicated", "common", "default", "additional", "primary",
       "secondary", "serving", "target", "source", "pending", "valid", "invalid"]
TITLES = ["General", "Overview", "Procedures", "Initiation", "Actions upon reception", "Timers",
          "Constants", "Structure", "Functions", "Services", "Configuration", "Handling of errors",
          "State variables", "Formats", "Parameters", "Data transfer", "Mobility", "Security"]


def sentence(rng: random.Random) -> str:
    words = f"the {rng.choice(ADJ)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)} {rng.choice(CONDS)}"
    if rng.random() < 0.4:
        words += f" and the {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(ADJ)} {rng.choice(NOUNS)}"
    return words[0].upper() + words[1:] + "."


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(2, 7)))


def table(rng: random.Random) -> str:
    rows = ["| Parameter | Value | Description |", "|---|---|---|"]
    for _ in range(rng.randint(2, 6)):
        rows.append(f"| {rng.choice(ADJ)}-{rng.choice(NOUNS)} | {rng.randint(1, 4096)} ms | "
                    f"{rng.choice(VERBS)} {rng.choice(CONDS)} |")
    return "\n".join(rows)


def body(rng: random.Random) -> list[str]:
    blocks = [paragraph(rng) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.3:
        blocks.insert(rng.randint(0, len(blocks)), table(rng))
    if rng.random() < 0.2:
        blocks.append("\n".join(f"- {sentence(rng)}" for _ in range(rng.randint(2, 4))))
    return blocks


@dataclass
class Clause:
    number: str
    title: str
    blocks: list[str] = field(default_factory=list)


def clauses(rng: random.Random, n: int) -> list[Clause]:
    out: list[Clause] = []
    top = 3
    while len(out) < n:
        top += 1
        out.append(Clause(str(top), rng.choice(TITLES), body(rng) if rng.random() < 0.3 else []))
        for sub in range(1, rng.randint(2, 6)):
            out.append(Clause(f"{top}.{sub}", rng.choice(TITLES), body(rng)))
            for subsub in range(1, rng.randint(1, 4)):
                out.append(Clause(f"{top}.{sub}.{subsub}", rng.choice(TITLES), body(rng)))
    return out[:n]


def edit_words(rng: random.Random, text: str, n: int) -> str:
    words = text.split(" ")
    for _ in range(n):
        i = rng.randrange(len(words))
        if not words[i].startswith(("|", "-")):
            words[i] = rng.choice(ADJ)
    return " ".join(words)


def next_release(rng: random.Random, prev: list[Clause]) -> list[Clause]:
    """Most clauses unchanged, some lightly edited, a few rewritten, some added."""
    out = []
    for c in prev:
        r = rng.random()
        if r < 0.6 or not c.blocks:
            out.append(Clause(c.number, c.title, list(c.blocks)))
        elif r < 0.9:
            blocks = list(c.blocks)
            i = rng.randrange(len(blocks))
            blocks[i] = edit_words(rng, blocks[i], rng.randint(1, 4))
            if rng.random() < 0.3:
                blocks[i] += " " + sentence(rng)
            out.append(Clause(c.number, c.title, blocks))
        else:
            out.append(Clause(c.number, c.title, body(rng)))
    top = int(prev[-1].number.split(".")[0]) + 1
    out.extend(Clause(f"{top}.{k}", rng.choice(TITLES), body(rng)) for k in range(1, rng.randint(2, 4)))
    return out


def render(spec: str, version: str, release: int, cls: list[Clause]) -> str:
    header = f"3GPP TS {spec} V{version} (2024-03)"
    lines = [header, "", "Technical Specification", "", "Contents", ""]
    lines += [f"{c.number}{c.title}{7 + i // 3}" for i, c in enumerate(cls)]
    lines += [""]
    page = 1
    for i, c in enumerate(cls):
        depth = c.number.count(".") + 1
        lines += [f"{'#' * (depth + 1)} {c.number} {c.title}", ""]
        for b in c.blocks:
            lines += [b, ""]
        if i % 6 == 5:
            page += 1
            lines += [header, str(page), f"Release {release}", ""]
    return "\n".join(lines) + "\n"


def generate(out_dir: str | Path, target_bytes: int, releases: int = 4, clauses_per_spec: int = 400,
             seed: int = 7) -> list[Path]:
    """Writes `<spec>_rel<NN>.md` files until about ``target_bytes`` are written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written: list[Path] = []
    total = 0
    spec_no = 300
    while total < target_bytes:
        spec_no += 1
        spec = f"38.{spec_no}"
        cls = clauses(rng, clauses_per_spec)
        for k in range(releases):
            release = 15 + k
            if k:
                cls = next_release(rng, cls)
            text = render(spec, f"{release}.{rng.randint(0, 9)}.0", release, cls)
            path = out_dir / f"{spec.replace('.', '')}_rel{release}.md"
            path.write_text(text, encoding="utf-8")
            written.append(path)
            total += len(text.encode("utf-8"))
            if total >= target_bytes:
                break
    return written
