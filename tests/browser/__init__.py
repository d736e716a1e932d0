"""Browser tests as a package, so their package-scoped fixtures (Playwright, JupyterLab) stop after them.

Why it matters: Playwright's sync API keeps an asyncio loop marked as running in the test thread until
it is stopped; left running for the rest of the session it broke later tests that call asyncio.run().
"""
