"""One session, work fanned out over a thread pool with `lai.continued`.

Each worker continues the session inside its own `with lai.continued(id):`
block; the steps they record land in that session, and the block detaches
(not ends) on exit.
"""

from concurrent.futures import ThreadPoolExecutor

import lucidic as lai


@lai.step(action="Summarise document")
def summarise(doc: str) -> str:
    lai.create_event(description=f"read {doc}", result=f"{len(doc)} characters")
    return doc.upper()


def worker(session_id: str, doc: str) -> str:
    with lai.continued(session_id):
        return summarise(doc)


session_id = lai.init(session_name="Thread pool summaries")
with ThreadPoolExecutor(max_workers=4) as pool:
    results = list(pool.map(lambda d: worker(session_id, d), ["alpha", "beta", "gamma", "delta"]))
lai.end_session(is_successful=True)
print(f"Summarised {len(results)} documents in session {session_id}")
