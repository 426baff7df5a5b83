"""DVC stage train@<key>: see retrievers.pipeline.train."""

from retrievers.pipeline import train, stage_main

if __name__ == "__main__":
    stage_main(train)
