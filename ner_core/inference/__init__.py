"""Using a trained model: ``tagger`` tags texts of any length, ``evaluate`` scores a labelled split."""
