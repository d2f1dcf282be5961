import sys

import mmsearch

col = mmsearch.open(sys.argv[1] if len(sys.argv) > 1 else ".demo.mms")

# The user liked the two best matches for "a red car" and not the cat: more like those, unlike that.
liked = [hit.id for hit in col.search("a red car", k=2)]
disliked = [col.search("a cat", k=1)[0].id]
for hit in col.recommend(liked, negative_ids=disliked, k=3):
    print(f"recommend {hit.score:.3f} {hit.uri}")

# Item-to-item neighbours, one result per group of near-duplicates.
for hit in col.similar(liked[0], k=3, dedup=0.98):
    print(f"similar   {hit.score:.3f} {hit.uri}")

# Many queries in one call (one encoder batch, one index search), results in the same order.
for query, hits in zip(["a bus", "flowers"], col.search_batch(["a bus", "flowers"], k=2)):
    print(f"batch     {query!r} -> {[hit.uri.rsplit('/', 1)[-1] for hit in hits]}")

# Raw embeddings for your own scoring: (ids, vectors) one shard at a time, or by id.
for ids, vectors in col.iter_embeddings("image"):
    print(f"embeddings {ids.shape} {vectors.shape} {vectors.dtype}")
print("by id", col.embeddings(liked).shape)
