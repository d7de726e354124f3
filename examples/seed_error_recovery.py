"""The seed's "Error Recovery Example", as written (apart from the import).

process_part_1 saves its own progress and then fails, as a flaky data source
would; the except branch reloads the checkpoint and continues the session it
names (re-entering the current session is allowed).
"""

import os
import pickle

import lucidic as lai

CHECKPOINT = "checkpoint.pkl"


def process_part_1():
    data = {"rows_done": 3}
    lai.create_step(state="Reading source", action="Load first rows")
    lai.create_event(description="loaded rows", result="3 rows")
    lai.end_step()
    save_checkpoint(session_id, data)  # progress so far (session_id: set below by init)
    raise ConnectionError("the data source went away")


def process_part_2(data):
    lai.create_step(state=f"Resuming after {data['rows_done']} rows", action="Load the rest")
    lai.create_event(description="loaded rows", result="7 rows")
    lai.end_step()


def save_checkpoint(session_id, data):
    with open('checkpoint.pkl', 'wb') as f:
        pickle.dump({'session_id': session_id, 'data': data}, f)

def load_checkpoint():
    with open('checkpoint.pkl', 'rb') as f:
        return pickle.load(f)

try:
    # Start new session
    session_id = lai.init(session_name="Long Running Process")
    data = process_part_1()
    save_checkpoint(session_id, data)

except Exception as e:
    # On failure, recover from checkpoint
    checkpoint = load_checkpoint()
    lai.continue_session(session_id=checkpoint['session_id'])
    # Continue from where we left off
    process_part_2(checkpoint['data'])

os.remove(CHECKPOINT)
print(f"Recovered session: {checkpoint['session_id']}")
