from .glip import GLIP
from .language_rcnn import LanguageAwareRCNN
