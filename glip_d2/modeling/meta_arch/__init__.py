from .glip import GLIP
