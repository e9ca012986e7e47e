"""The one label vocabulary: HAM10000's diagnosis (dx) codes.

Every layout maps its labels onto these codes, so a model trained on ISIC 2017 and one trained
on HAM10000 speak the same language and the app can name a class the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnosis:
    code: str
    name: str
    malignant: bool


DIAGNOSES: dict[str, Diagnosis] = {
    d.code: d
    for d in (
        Diagnosis("akiec", "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)", True),
        Diagnosis("bcc", "Basal cell carcinoma", True),
        Diagnosis("bkl", "Benign keratosis (solar lentigo, seborrhoeic keratosis, LPLK)", False),
        Diagnosis("df", "Dermatofibroma", False),
        Diagnosis("mel", "Melanoma", True),
        Diagnosis("nv", "Melanocytic naevus", False),
        Diagnosis("vasc", "Vascular lesion", False),
    )
}

DX_CODES: tuple[str, ...] = tuple(DIAGNOSES)
MALIGNANT_CODES: frozenset[str] = frozenset(c for c, d in DIAGNOSES.items() if d.malignant)


def full_name(code: str) -> str:
    return DIAGNOSES[code].name if code in DIAGNOSES else code
