"""DVC stage train@<key>: see retrievers.pipeline.train."""

from retrievers.pipeline import stage_main, train

if __name__ == "__main__":
    stage_main(train)
