"""Questions for feedback collection and evaluation: a built-in set, or any file of prompts.

The built-in set has 120 questions: the last `HELD_OUT` (50, the size of the paper's evaluation
set) are kept for `soups experiment`, the first 70 are for `soups collect`."""

from __future__ import annotations

from pathlib import Path

from personalm.errors import PersonalmError
from personalm.tables import read_rows

HELD_OUT = 50
BUILTIN_PROMPTS = (
    "Why is the sky blue?",
    "How do vaccines work?",
    "What causes the seasons on Earth?",
    "How does a computer store information?",
    "Why do we need sleep?",
    "What is inflation in economics?",
    "How do plants make their food?",
    "What is a black hole?",
    "How does the internet send a message from one place to another?",
    "Why do leaves change colour in autumn?",
    "What is DNA?",
    "How do airplanes stay in the air?",
    "What is climate change?",
    "How does the heart pump blood?",
    "What is machine learning?",
    "Why does ice float on water?",
    "How do volcanoes form?",
    "What is the stock market?",
    "How does memory work in the brain?",
    "Why do we have tides?",
    "What is electricity?",
    "How do bees make honey?",
    "What is a prime number?",
    "Why is exercise good for you?",
    "How does a rainbow form?",
    "What is photosynthesis used for by animals?",
    "How do antibiotics fight infections?",
    "What is gravity?",
    "How does recycling help the environment?",
    "What is an atom made of?",
    "How do earthquakes happen?",
    "What is the difference between weather and climate?",
    "How does a battery work?",
    "Why do cats purr?",
    "What is a democracy?",
    "How do fish breathe underwater?",
    "What makes music sound pleasant?",
    "How does a refrigerator keep food cold?",
    "Why is the ocean salty?",
    "What is the speed of light?",
    "How do vaccines get tested before they are approved?",
    "Why do onions make people cry?",
    "What is the difference between a virus and a bacterium?",
    "How does a microwave oven heat food?",
    "Why do stars twinkle?",
    "What is an ecosystem?",
    "How do birds know where to migrate?",
    "What is a credit score?",
    "How does soap clean dirty hands?",
    "Why do we get goosebumps?",
    "What is the water cycle?",
    "How does a GPS receiver know where it is?",
    "What causes thunder and lightning?",
    "How do solar panels make electricity?",
    "Why do some people need glasses?",
    "What is a hurricane?",
    "How does the immune system remember germs?",
    "What is the difference between a star and a planet?",
    "How do submarines dive and surface?",
    "Why does bread rise?",
    "What is interest on a loan?",
    "How do chameleons change colour?",
    "What is evolution by natural selection?",
    "How does a telescope make distant things look closer?",
    "Why do we yawn?",
    "What is a calorie?",
    "How do glaciers move?",
    "What is the purpose of a central bank?",
    "How does a camera capture a photograph?",
    "Why is the Moon sometimes visible during the day?",
    "What are tectonic plates?",
    "How does a touchscreen detect a finger?",
    "Why do we dream?",
    "What is a carbon footprint?",
    "How do wind turbines work?",
    "What is the greenhouse effect?",
    "How do muscles grow stronger?",
    "Why do apples turn brown after being cut?",
    "What is an algorithm?",
    "How does a lock and key work?",
    "What is the difference between a solid, a liquid and a gas?",
    "How do kidneys clean the blood?",
    "Why do some animals hibernate?",
    "What is a supply chain?",
    "How does sound travel through the air?",
    "What is a fossil and how does it form?",
    "How do noise-cancelling headphones work?",
    "Why is biodiversity important?",
    "How does a parachute slow a fall?",
    "How does a bicycle stay upright when moving?",
    "What is the placebo effect?",
    "How do coral reefs form?",
    "Why do we have different time zones?",
    "What is encryption?",
    "How does a nuclear power plant make electricity?",
    "What is the difference between a comet and an asteroid?",
    "How do our eyes see colour?",
    "Why do prices go up when demand rises?",
    "What is a gene?",
    "How does a thermometer measure temperature?",
    "Why do mosquitoes bite some people more than others?",
    "What is the Milky Way?",
    "How does a search engine find web pages?",
    "Why does metal feel colder than wood at the same temperature?",
    "What is erosion?",
    "How do hearing aids help people hear?",
    "What is a budget deficit?",
    "How do plants know which way is up?",
    "Why is sleep important for memory?",
    "What is a neuron?",
    "How does a compass point north?",
    "Why do boats float?",
    "What is the ozone layer?",
    "How do elections decide who wins?",
    "What makes a diamond so hard?",
    "How does caffeine keep people awake?",
    "How do tsunamis form?",
    "What is a spreadsheet used for?",
    "How do bats find their way in the dark?",
    "What is renewable energy?",
)


def load_prompts(path: str | Path | None = None, column: str = "prompt") -> list[str]:
    """The built-in questions, or those in a text file (one per line) / JSONL / Parquet `column`."""
    if path is None:
        return list(BUILTIN_PROMPTS)
    prompts = []
    for line, row in read_rows(path):
        value = row.get("text") if "text" in row and column not in row else row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise PersonalmError(f"expected a non-empty '{column}' string", source=str(path), line=line)
        prompts.append(value.strip())
    if not prompts:
        raise PersonalmError("no prompts", source=str(path))
    return prompts


def split_prompts(prompts: list[str], held_out: int) -> tuple[list[str], list[str]]:
    """(train, held-out): the last `held_out` prompts are kept for evaluation only."""
    if held_out >= len(prompts):
        raise PersonalmError(f"{len(prompts)} prompts cannot leave {held_out} held out and some to train on")
    return prompts[: len(prompts) - held_out], prompts[len(prompts) - held_out :]
