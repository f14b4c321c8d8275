"""Training: the loop (``loop``), its resumable state and checkpoint (``run_state``), and the dev-F1 record
per precision written at its end (``precision_record``)."""

from ner_core._moved import moved

__getattr__ = moved(
    __name__,
    {
        **{
            n: "ner_core.training.loop"
            for n in ("train", "TrainResult", "make_optimizer", "set_seed", "lr_factor", "EpochStats")
        },
        "check_window": "ner_core.model.encoder",
    },
)
