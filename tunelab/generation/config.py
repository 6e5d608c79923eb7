"""The flags of term generation (`tunelab expand`, `tunelab expand-tune`), as config.py's rung configs: one frozen
dataclass per command, standard library only, so the command line is built without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

from tunelab.config import at_least_one
from tunelab.errors import ConfigError

# 50 languages of the built-in evaluation, chosen for breadth of script and family.
COUNTRY_LANGUAGES = ("af", "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "es", "et", "eu", "fa", "fi", "fr",
                     "gl", "he", "hi", "hr", "hu", "id", "is", "it", "ja", "ka", "kk", "ko", "lt", "lv", "mk", "ms",
                     "nb", "nl", "pl", "pt", "ro", "ru", "sk", "sl", "sr", "sv", "sw", "ta", "th", "tr", "uk", "ur",
                     "vi", "zh")



@dataclass(frozen=True)
class ExpandConfig:
    """The flags of `tunelab expand`."""
    languages: Annotated[tuple[str, ...], "Comma list of CLDR codes (default: 50 languages)."] = COUNTRY_LANGUAGES
    per_language: Annotated[int, "Candidates per concept and language."] = 3
    decoding: Annotated[Literal["beam", "sample"], "beam (deterministic) or sample."] = "beam"
    temperature: Annotated[float, "Sampling temperature."] = 0.7
    max_new_tokens: Annotated[int, "Longest candidate, in tokens."] = 16
    # 32 measured best on 2 cores; see docs/BENCHMARKS.md
    batch_size: Annotated[int, "Prompts per generate() call."] = 32
    min_score: Annotated[float | None, "Drop candidates under this mean token log-probability."] = None
    # self-consistency: with --decoding sample, a name that several samples agree on is more often right
    min_agreement: Annotated[int, "Keep a term only when this many of its pair's candidates agree on it."] = 1
    # the agreement share when sampled, else the mean token probability exp(score); what /match can filter on
    min_confidence: Annotated[float | None, "Keep a term only at or above this confidence (0..1)."] = None
    back_translate: Annotated[bool, "Keep a term only when the model, asked for its English name, answers the "
                                    "concept's seed name."] = False
    append: Annotated[bool, "Add to a store that holds another generator's terms."] = False
    seed: Annotated[int, "Seed for sampling."] = 0

    def __post_init__(self):
        problems = []
        if self.decoding not in ("beam", "sample"):
            problems.append(f"--decoding must be beam or sample, got {self.decoding!r}")
        problems += at_least_one(("--per-language", self.per_language), ("--max-new-tokens", self.max_new_tokens),
                                 ("--batch-size", self.batch_size), ("--min-agreement", self.min_agreement))
        if self.min_agreement > self.per_language:
            problems.append(f"--min-agreement {self.min_agreement} is more than the --per-language "
                            f"{self.per_language} candidates a pair gets")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            problems.append(f"--min-confidence must lie in 0..1, got {self.min_confidence}")
        if self.temperature <= 0:
            problems.append(f"--temperature must be > 0, got {self.temperature}")
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_flags(cls, *, languages: str | None = None, **fields) -> ExpandConfig:
        """A config from command-line text: `languages` as a comma list of CLDR codes, each checked."""
        return cls(**fields) if languages is None else cls(languages=language_codes(languages), **fields)


@dataclass(frozen=True)
class GeneratorTuneConfig:
    """The flags of `tunelab expand-tune`."""
    epochs: Annotated[int, "Passes over the pairs."] = 2
    lr: Annotated[float, "Learning rate."] = 1e-3
    lora_r: Annotated[int, "LoRA rank."] = 8
    lora_alpha: Annotated[int, "LoRA alpha."] = 16
    batch_size: Annotated[int, "Pairs per optimizer step."] = 16
    seed: Annotated[int, "Seed for initialisation and data order."] = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lora_r < 1 or self.lr <= 0:
            raise ConfigError(f"--epochs, --batch-size and --lora-r must be >= 1 and --lr > 0, got {asdict(self)}")



def language_codes(text: str | tuple[str, ...]) -> tuple[str, ...]:
    """Checked CLDR language codes (pt, de, ja, zh_Hant, pt-BR); an unknown one is refused with the accepted list."""
    from babel import Locale, UnknownLocaleError
    from babel.localedata import locale_identifiers

    codes = [c.strip().replace("-", "_") for c in (text.split(",") if isinstance(text, str) else text) if c.strip()]
    if not codes:
        raise ConfigError("--languages needs at least one language code")
    for code in codes:
        try:
            Locale.parse(code)
        except (ValueError, UnknownLocaleError):
            accepted = ", ".join(sorted({c.split("_")[0] for c in locale_identifiers()}))
            raise ConfigError(f"--languages: unknown language code {code!r}; accepted (CLDR): {accepted}") from None
    if len(set(codes)) != len(codes):
        raise ConfigError(f"--languages lists a code twice: {','.join(codes)}")
    return tuple(codes)
