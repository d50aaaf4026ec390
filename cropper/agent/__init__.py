"""The agent: the in-context loop, its requests and results, prompts and replies.

Also the crops that stand in for a VLM (baselines) and the factories of its parts.
"""
