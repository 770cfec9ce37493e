"""Infrastructure under the apps: hand-written SQL rows (`rows`), one statement run on its own (`statements`), raw
Redis and Celery messages (`broker`), the group commit (`groupcommit`). Imports Django and libraries, nothing of ours
(`.importlinter` keeps it so)."""
