"""Storage lifecycle (``[retention]``): which received instances and result objects may be deleted and when
(``rules``), the facts it decides on (``inventory``), the one purger (``purger``), one copy of results per study
(``superseded``) and studies marked to keep (``keep``)."""
