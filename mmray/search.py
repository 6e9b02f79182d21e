"""The search functions every route uses: text, image and similar-product search.

`SearchService` joins an Embedder (query -> vector) and a Retriever (vector -> items); the Serve
graph splits the two across deployments but calls the same methods.
"""
from __future__ import annotations

from PIL import Image

from mmray.config import IndexConfig
from mmray.embedder import Embedder
from mmray.index.filters import SearchFilters
from mmray.index.retriever import Hit, Retriever
from mmray.storage import Version


class SearchService:
    def __init__(self, embedder: Embedder, retriever: Retriever, cfg: IndexConfig):
        self.embedder, self.retriever, self.cfg = embedder, retriever, cfg

    @classmethod
    def load(cls, index: Version, cfg: IndexConfig) -> "SearchService":
        """An index version and the model it was built with (both verified by the store)."""
        retriever = Retriever.load(index, cfg.nprobe, cfg.ef_search, cfg.rrf_k)
        model = index.store.resolve_ref(index.manifest["parents"]["model"])
        return cls(Embedder.from_checkpoint(model.local_dir()), retriever, cfg)

    def search_text(self, query: str, k: int = 10, filters: SearchFilters | None = None,
                    hybrid: bool | None = None, collapse: bool = True) -> list[Hit]:
        vector = self.embedder.embed_texts([query])[0]
        use_hybrid = self.cfg.hybrid if hybrid is None else hybrid
        return self.retriever.search(vector, k, filters, query_text=query, hybrid=use_hybrid, collapse=collapse)

    def search_image(self, image: Image.Image | bytes, k: int = 10, filters: SearchFilters | None = None,
                     collapse: bool = True) -> list[Hit]:
        vector = self.embedder.embed_images([image])[0]
        return self.retriever.search(vector, k, filters, collapse=collapse)

    def similar(self, product_id: str, k: int = 10, filters: SearchFilters | None = None) -> list[Hit]:
        return self.retriever.similar(product_id, k, filters)
