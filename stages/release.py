"""DVC stage release@<key>: see retrievers.pipeline.release."""

from retrievers.pipeline import release, stage_main

if __name__ == "__main__":
    stage_main(release)
