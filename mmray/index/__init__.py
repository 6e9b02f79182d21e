"""Vector + lexical index: build (`build.py`), FAISS helpers (`ann.py`), search (`retriever.py`)."""
