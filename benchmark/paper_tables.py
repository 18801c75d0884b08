"""The cells of the paper's Tables 1–4 and the values the paper reports for them, and of
the comparison beside them (``sota``: the paper's methods and later ones)."""

from __future__ import annotations

from dataclasses import dataclass

from bmdbench.errors import ConfigError

PAPER_BACKBONE = "vgg11_bn_se"  # the backbone of Tables 2–4 (VGG-11-BN with SE blocks)


@dataclass(frozen=True)
class TableCell:
    label: str  # the paper's name for the cell
    method: str
    backbone: str | None = None  # None: the table's backbone (PAPER_BACKBONE unless replaced)
    sets: tuple[tuple[str, str], ...] = ()  # --set overrides that define the cell
    paper_r: float | None = None  # the paper's reported test R and RMSE (g/cm²)
    paper_rmse: float | None = None
    group: str = ""  # Table 3: the column group (Triplet Loss | ATL)
    control: str | None = None  # label of the cell of this stage-2 cell's supervised control


@dataclass(frozen=True)
class PaperTable:
    name: str
    title: str
    cells: tuple[TableCell, ...]
    reference: str  # label of the cell every other cell is tested against
    layout: str  # "columns": cells are columns (Tables 1, 2); "rows"; "groups" (Table 3)
    raw_scale: bool = False  # z-scored runs: show the raw-target-scale λ and m beside each margin


def _margins(method: str, group: str, rs: list[float], rmses: list[float]) -> list[TableCell]:
    return [
        TableCell(f"{m}", method, None, ((f"{method}.margin", str(m)),), r, e, group)
        for m, r, e in zip((0.1, 0.3, 0.5, 0.7, 1.0), rs, rmses, strict=True)
    ]


_BASELINE = TableCell("Baseline", "baseline", None, (), 0.8520, 0.0831)
# the equal-compute supervised controls (bmdbench.methods.control): each stage-2 row's ΔR
# against the control of its own parent is the gain from the unlabeled images
_CONTROL = TableCell("Control", "control")
_CONTROL_ATL = TableCell("Control (ATL)", "control_atl")
TABLE2_CELLS = (
    _BASELINE,
    _CONTROL,
    TableCell("Π-model", "pi_model", None, (), 0.8637, 0.0828, control="Control"),
    TableCell("Temp. Ensemble", "temporal_ensembling", None, (), 0.8722, 0.0832, control="Control"),
    TableCell("Mean Teacher", "mean_teacher", None, (), 0.8600, 0.0817, control="Control"),
    _CONTROL_ATL,
    TableCell("Proposed", "proposed", None, (), 0.8805, 0.0758, control="Control (ATL)"),
)

TABLES: dict[str, PaperTable] = {
    "table1": PaperTable(
        "table1",
        "Table 1. The baseline (MSE) on different backbones",
        (
            TableCell("VGG-11", "baseline", "vgg11_bn", (), 0.8520, 0.0831),
            TableCell("VGG-13", "baseline", "vgg13_bn", (), 0.8501, 0.0855),
            TableCell("VGG-16", "baseline", "vgg16_bn", (), 0.8335, 0.1158),
            TableCell("ResNet-18", "baseline", "resnet18", (), 0.8398, 0.0883),
            TableCell("ResNet-34", "baseline", "resnet34", (), 0.8445, 0.0946),
            TableCell("ResNet-50", "baseline", "resnet50", (), 0.8448, 0.1047),
        ),
        reference="VGG-11",
        layout="columns",
    ),
    "table2": PaperTable(
        "table2",
        "Table 2. Semi-supervised methods",
        TABLE2_CELLS,
        reference="Baseline",
        layout="columns",
    ),
    "table3": PaperTable(
        "table3",
        "Table 3. Triplet loss vs adaptive triplet loss (ATL) over margins",
        (
            *_margins(
                "triplet",
                "Triplet Loss",
                [0.8515, 0.8459, 0.8538, 0.8549, 0.8522],
                [0.0917, 0.1000, 0.0866, 0.0823, 0.0829],
            ),
            *_margins(
                "atl",
                "ATL",
                [0.8563, 0.8657, 0.8670, 0.8565, 0.8524],
                [0.1013, 0.0814, 0.0806, 0.0836, 0.1215],
            ),
            TableCell("Baseline", "baseline", None, (), 0.8520, 0.0831, "Baseline"),
        ),
        reference="Baseline",
        layout="groups",
        raw_scale=True,
    ),
    "table4": PaperTable(
        "table4",
        "Table 4. Ablation of the adaptive triplet loss and self-training",
        (
            _BASELINE,
            TableCell("Baseline + ATL", "atl", None, (), 0.8670, 0.0806),
            _CONTROL,
            TableCell("SSL", "pseudo_label", None, (), 0.8605, 0.0809, control="Control"),
            _CONTROL_ATL,
            TableCell(
                "SSL + ATL", "pseudo_label_atl", None, (), 0.8772, 0.0767, control="Control (ATL)"
            ),
            TableCell(
                "Proposed w/o Consistency",
                "proposed_no_consistency",
                None,
                (),
                0.8776,
                0.0761,
                control="Control (ATL)",
            ),
            TableCell("Proposed", "proposed", None, (), 0.8805, 0.0758, control="Control (ATL)"),
        ),
        reference="Baseline",
        layout="rows",
    ),
    "sota": PaperTable(
        "sota",
        "Semi-supervised regression methods since the paper, beside the paper's",
        (
            *TABLE2_CELLS,
            TableCell("UCVME", "ucvme", control="Control"),
            TableCell("MixMatch", "mixmatch", control="Control"),
            TableCell("RDA", "rda", control="Control"),
            TableCell("RankUp", "rankup", control="Control"),
            TableCell("RankUp + RDA", "rankup_rda", control="Control"),
            TableCell("HPL", "hpl", control="Control"),
            TableCell("CLSS", "clss", control="Control"),
        ),
        reference="Baseline",
        layout="rows",
    ),
}

PAPER = ("table1", "table2", "table3", "table4")
"""The paper's own tables: what ``all`` names."""

METHOD_TABLES = ("table2", "table4", "sota")
"""The tables of semi-supervised methods: their comparisons form one Holm family."""


def family(table: PaperTable) -> tuple[str, tuple[TableCell, ...]]:
    """The Holm family of ``table``'s comparisons: its name and every cell it covers.

    The methods tables (:data:`METHOD_TABLES`) share one family, the union of their cells:
    a method's ΔR against its control (or the baseline) is one comparison, with one p, in
    every table that shows it. Tables 1 and 3 are families of their own.
    """
    if table.name not in METHOD_TABLES:
        return table.name, table.cells
    cells: dict[TableCell, None] = {}
    for name in METHOD_TABLES:
        cells.update(dict.fromkeys(TABLES[name].cells))
    return "methods", tuple(cells)


def select(name: str) -> list[PaperTable]:
    """``table1`` … ``table4``, ``all`` (those four) or ``sota``."""
    if name == "all":
        return [TABLES[t] for t in PAPER]
    if name not in TABLES:
        raise ConfigError(f"unknown table {name!r}", f"use one of: {', '.join(TABLES)}, all")
    return [TABLES[name]]
