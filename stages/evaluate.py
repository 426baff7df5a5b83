"""DVC stage evaluate@<key>: see retrievers.pipeline.evaluate."""

from retrievers.pipeline import evaluate, stage_main

if __name__ == "__main__":
    stage_main(evaluate)
