"""Is it the instruction? Each instructed task's figures beside those of its paraphrases and
its controls (its own words shuffled, a generic instruction as long), so a reader sees
whether a difference between tasks is larger than the wording's noise, and whether the
instruction moves its target more than any prefix of its length would.

Plain functions over the figures of each prompt (``task_quality``'s rows); no arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from qwen_assets.settings import SCORE_PROPERTIES

# The figures compared, in the order the site and the table give them: what the task aims at
# first, then what a classifier and a clustering get, then how far the space moved.
COMPARED_FIGURES = (
    "probe_accuracy",
    *(f"probe_{name}" for name in SCORE_PROPERTIES),
    "v_measure",
    "overlap_with_reference",
    "cka_with_reference",
)
CONTROL_ROLES = ("shuffled", "generic")
CONTROL_WORDS = {"shuffled": "its shuffled words do", "generic": "a generic instruction does"}


@dataclass(frozen=True)
class PromptFigures:
    """One prompt's figures: a task's own instruction, a paraphrase of it, or a control."""

    task: str
    role: str  # "task", "paraphrase", "shuffled" or "generic"
    figures: Mapping[str, float | int | None]


@dataclass(frozen=True)
class Effect:
    """One figure of one task: the instruction's value, its spread over the instruction and
    its paraphrases, and the controls' values (None: that control is off, or the figure
    needs labels the corpus lacks)."""

    variant: str
    task: str
    figure: str
    is_target: bool
    instruction: float | None
    paraphrase_min: float | None
    paraphrase_max: float | None
    paraphrases: int
    shuffled: float | None
    generic: float | None

    @property
    def beyond_shuffled(self) -> float | None:
        return _minus(self.instruction, self.shuffled)

    @property
    def beyond_generic(self) -> float | None:
        return _minus(self.instruction, self.generic)

    @property
    def strongest_control(self) -> str | None:
        """The control with the higher value (the one the instruction must beat)."""
        present = {role: getattr(self, role) for role in CONTROL_ROLES}
        present = {role: value for role, value in present.items() if value is not None}
        return max(present, key=present.__getitem__) if present else None

    @property
    def within_controls(self) -> bool | None:
        """Whether the instruction moves its target no more than a control does (None: not
        the target's figure, where higher is not simply more of what it asks for, such as
        the overlap with the default task; or no control, or no figure)."""
        control = self.strongest_control
        if not self.is_target or control is None or self.instruction is None:
            return None
        return self.instruction <= getattr(self, control)

    def warning(self, target: str) -> str | None:
        """One line when the instruction does nothing its controls do not."""
        if not self.within_controls:
            return None
        return (
            f"{self.task}'s instruction moves {target} no more than "
            f"{CONTROL_WORDS[self.strongest_control]}"  # type: ignore[index]
            f" ({self.figure} {self.instruction:.3f} against "
            f"{getattr(self, self.strongest_control):.3f})"  # type: ignore[arg-type]
        )

    def row(self) -> dict[str, object]:
        return {
            **asdict(self),
            "beyond_shuffled": _rounded(self.beyond_shuffled),
            "beyond_generic": _rounded(self.beyond_generic),
            "strongest_control": self.strongest_control,
            "within_controls": self.within_controls,
        }


def _minus(first: float | None, second: float | None) -> float | None:
    return None if first is None or second is None else first - second


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _value(figures: Mapping[str, float | int | None], name: str) -> float | None:
    value = figures.get(name)
    return None if value is None else float(value)


def instruction_effects(
    variant: str, prompts: Sequence[PromptFigures], targets: Mapping[str, str | None]
) -> list[Effect]:
    """For each task of ``variant`` that has controls or paraphrases among ``prompts``, one
    ``Effect`` per figure: its target's figure (``predicts_<target>``) first, then
    ``COMPARED_FIGURES``. ``targets``: each task's target (None: none)."""
    by_task: dict[str, dict[str, list[Mapping[str, float | int | None]]]] = {}
    for prompt in prompts:
        by_task.setdefault(prompt.task, {}).setdefault(prompt.role, []).append(prompt.figures)
    effects = []
    for task, roles in by_task.items():
        if set(roles) == {"task"}:
            continue
        target = targets.get(task)
        names = ([f"predicts_{target}"] if target else []) + list(COMPARED_FIGURES)
        own = roles["task"][0]
        for name in names:
            wordings = [
                value
                for figures in [own, *roles.get("paraphrase", [])]
                if (value := _value(figures, name)) is not None
            ]
            controls = {
                role: _value(roles[role][0], name) if role in roles else None
                for role in CONTROL_ROLES
            }
            effects.append(
                Effect(
                    variant=variant,
                    task=task,
                    figure=name,
                    is_target=name == f"predicts_{target}",
                    instruction=_value(own, name),
                    paraphrase_min=min(wordings) if wordings else None,
                    paraphrase_max=max(wordings) if wordings else None,
                    paraphrases=len(roles.get("paraphrase", [])),
                    **controls,
                )
            )
    return effects
