"""DVC stage download@<key>: see retrievers.pipeline.download."""

from retrievers.pipeline import download, stage_main

if __name__ == "__main__":
    stage_main(download)
