"""A transparent politeness scorer: the politeness strategies of Danescu-Niculescu-Mizil et al. (2013), "A
computational approach to politeness with application to social factors" (ACL), as hand-weighted cues.

Every cue is a regular expression over the text (or over each sentence's start); each match adds its weight,
a strategy counts at most twice, and the sum maps to 0..100 (50 = no cue either way):

    politeness = 50 + 50 * tanh(sum / 2)

Signs follow the paper's findings (its Table 3: which strategies go with polite or impolite requests, as
annotated on Wikipedia and Stack Exchange); magnitudes are ours, chosen by hand, not fitted. The last two
cues (shouting, demands) are not in the paper: they are marked `extension`. This is a readable heuristic to
show *why* an email reads as it does, not a trained classifier; it knows only English and the cues below.

| strategy | example | weight |
|---|---|---|
| gratitude | thanks, thank you, I appreciate, grateful | +1.0 |
| apologizing | sorry, I apologize, excuse me, pardon | +1.0 |
| counterfactual modal | could you, would you, would it be possible | +1.0 |
| please (inside a sentence) | "could you please ..." | +0.75 |
| greeting | hi, hello, dear, good morning (at the start) | +0.5 |
| deference | great work, good point, you're right, well done | +0.5 |
| hedges | I think, perhaps, maybe, might, I suggest, I wonder | +0.5 |
| indirect (by the way) | by the way | +0.5 |
| indicative modal | can you, will you | +0.25 |
| 1st person plural | we, our, let's | +0.25 |
| please (sentence start) | "Please send ..." | -0.25 |
| direct question | a sentence starting what/why/who/when/where/how ending "?" | -0.5 |
| direct start | a sentence starting so, then, and, but, or | -0.5 |
| 2nd person start | a sentence starting you, your | -0.5 |
| factuality | in fact, actually, obviously, clearly, the point is | -0.5 |
| direct imperative | a sentence starting with a bare verb: send, fix, do, tell, give, stop ... | -1.0 |
| shouting (extension) | an all-caps word of 4+ letters, or "!!" | -0.75 |
| demands (extension) | immediately, asap, right now, unacceptable, ridiculous | -0.75 |
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_PER_STRATEGY = 2

_W = r"\b"
# (strategy, weight, pattern over the whole text, case-insensitive)
TEXT_CUES: list[tuple[str, float, str]] = [
    ("gratitude", 1.0, rf"{_W}(thanks|thank you|thank u|(i|we) (really |truly )?appreciate|grateful|much appreciated){_W}"),
    ("apologizing", 1.0, rf"{_W}(sorry|apologi[sz]e|apologies|excuse me|pardon|forgive me){_W}"),
    ("counterfactual modal", 1.0, rf"{_W}(could you|would you|would it be possible|would you mind|could we|would we){_W}"),
    ("deference", 0.5, rf"{_W}(great (work|job|point|question)|nice (work|job)|good (work|job|point|question)|"
                       rf"well done|you'?re right|you are right|excellent work){_W}"),
    ("hedges", 0.5, rf"{_W}(i think|i believe|i suggest|i guess|i wonder|perhaps|maybe|might|possibly|probably|"
                    rf"it seems|somewhat|a bit|a little|kind of|sort of){_W}"),
    ("indirect (by the way)", 0.5, rf"{_W}by the way{_W}"),
    ("indicative modal", 0.25, rf"{_W}(can you|will you|can we|will we){_W}"),
    ("1st person plural", 0.25, rf"{_W}(we|our|ours|us|let'?s){_W}"),
    ("factuality", -0.5, rf"{_W}(in fact|actually|obviously|clearly|the point is|the fact is|the reality is){_W}"),
    ("demands (extension)", -0.75, rf"{_W}(immediately|asap|a\.s\.a\.p\.?|right now|unacceptable|ridiculous|"
                                   rf"as i (already )?said|once again){_W}"),
]

IMPERATIVE_VERBS = (
    "send fix do tell give stop make get finish call reply answer explain update check change remove submit "
    "provide stop read look listen bring fill sign return delete move write complete respond confirm resend "
    "review prepare cancel find note understand try deal hurry"
).split()

# (strategy, weight, pattern over a sentence's start, case-insensitive)
START_CUES: list[tuple[str, float, str]] = [
    ("greeting", 0.5, r"^(hi|hello|hey|dear|good (morning|afternoon|evening)|greetings)\b"),
    ("please (sentence start)", -0.25, r"^please\b"),
    ("direct question", -0.5, r"^(what|why|who|when|where|how)\b.*\?$"),
    ("direct start", -0.5, r"^(so|then|and|but|or)\b"),
    ("2nd person start", -0.5, r"^(you|your|you'?re)\b"),
    ("direct imperative", -1.0, rf"^({'|'.join(IMPERATIVE_VERBS)})\b(?!\?)"),
]


@dataclass
class Cue:
    strategy: str
    text: str
    weight: float


@dataclass
class Politeness:
    score: float        # 0..100, 50 = neutral
    raw: float          # sum of the counted weights
    cues: list[Cue]     # every match, in text order; counted ones first MAX_PER_STRATEGY per strategy

    def summary(self) -> str:
        return ", ".join(f"{c.strategy} '{c.text}' ({c.weight:+g})" for c in self.cues) or "no politeness cue"


def sentences(text: str) -> list[str]:
    """Sentences and lines: a new line starts a new sentence too (greetings, sign-offs, bullet lists)."""
    out = []
    for line in text.splitlines():
        out += [s.strip(" \t-*•>") for s in re.split(r"(?<=[.!?])\s+", line.strip()) if s.strip(" \t-*•>")]
    return out


def score(text: str) -> Politeness:
    found: list[tuple[int, Cue]] = []
    for strategy, weight, pattern in TEXT_CUES:
        for m in re.finditer(pattern, text, flags=re.IGNORECASE):
            found.append((m.start(), Cue(strategy, m.group(0), weight)))
    pos = 0
    for sent in sentences(text):
        at = text.find(sent, pos)
        pos = max(pos, at)
        for strategy, weight, pattern in START_CUES:
            m = re.search(pattern, sent, flags=re.IGNORECASE)
            if m:
                found.append((at, Cue(strategy, m.group(0) if strategy != "direct question" else sent[:40], weight)))
        # "please" inside a sentence (not its first word): the polite use
        for m in re.finditer(r"\bplease\b", sent, flags=re.IGNORECASE):
            if m.start() > 0:
                found.append((at + m.start(), Cue("please (inside a sentence)", m.group(0), 0.75)))
    for m in re.finditer(r"\b[A-Z]{4,}\b|!{2,}", text):
        found.append((m.start(), Cue("shouting (extension)", m.group(0), -0.75)))
    found.sort(key=lambda t: t[0])
    counted: dict[str, int] = {}
    cues, raw = [], 0.0
    for _, cue in found:
        counted[cue.strategy] = counted.get(cue.strategy, 0) + 1
        if counted[cue.strategy] <= MAX_PER_STRATEGY:
            raw += cue.weight
            cues.append(cue)
    return Politeness(score=round(50 + 50 * math.tanh(raw / 2), 1), raw=raw, cues=cues)
