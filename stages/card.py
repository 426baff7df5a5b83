"""DVC stage card@<key>: see retrievers.pipeline.card."""

from retrievers.pipeline import card, stage_main

if __name__ == "__main__":
    stage_main(card)
