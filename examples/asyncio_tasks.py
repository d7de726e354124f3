"""Several sessions at once on one event loop: each asyncio task works in its
own session through `async with lai.continued(id)`, and nothing crosses."""

import asyncio

import lucidic as lai


@lai.step(action="Research topic")
async def research(topic: str) -> str:
    await asyncio.sleep(0.01)
    lai.create_event(description=f"searched {topic}", result="3 hits")
    return f"notes on {topic}"


async def agent(session_id: str, topic: str) -> str:
    async with lai.continued(session_id, end=True):  # end=True: the task ends its session
        return await research(topic)


async def main() -> None:
    topics = ["tides", "volcanoes", "glaciers"]
    ids = []
    for topic in topics:
        ids.append(lai.init(session_name=f"Research {topic}"))
        lai.detach()  # created here, handed over to the task below
    notes = await asyncio.gather(*(agent(sid, t) for sid, t in zip(ids, topics, strict=True)))
    print(f"{len(notes)} tasks, sessions {', '.join(ids)}")


asyncio.run(main())
